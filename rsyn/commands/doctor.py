from typing import Annotated

import typer

from rsyn.cli import app


@app.command(
    "doctor",
    help="Show what this machine offers rsyn: versions, CUDA and GPUs, faiss GPU support, "
    "vLLM, the spaCy model, cached models, free memory and disk. Always exits 0.",
)
def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as one JSON object.")] = False,
) -> None:
    import json

    from rsyn.doctor import diagnose, render

    report = diagnose()
    print(json.dumps(report, indent=2) if as_json else render(report))
