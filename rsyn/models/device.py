"""Turn --device auto|cpu|cuda[:N] into a torch device string."""

from __future__ import annotations


def resolve_device(option: str) -> str:
    option = (option or "auto").strip().lower()
    if option == "cpu":
        return "cpu"
    import torch

    if option == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if option == "cuda" or option.startswith("cuda:"):
        if not torch.cuda.is_available():
            from rsyn.command import RsynError

            raise RsynError(f"--device {option}: no CUDA device is available (use --device cpu or auto)")
        return "cuda:0" if option == "cuda" else option
    from rsyn.command import RsynError

    raise RsynError(f"--device {option!r}: expected auto, cpu, cuda or cuda:N")
