"""Start-up: stages import only what they use (torch only for a model that may run on a GPU, open_clip
without timm/transformers when the model needs neither, spaCy and the report's tokenizer without torch).
Each check runs in a fresh interpreter, since the test process itself may have imported anything."""

import json
import os
import subprocess
import sys

import numpy as np
from conftest import jsonl

from rsyn.records import encode_embeddings

NO_GPU = {"CUDA_VISIBLE_DEVICES": ""}  # hides any GPU: the answer must come without torch


def fresh(code: str, env: dict | None = None) -> dict:
    """Run `code` in a new interpreter; it sets `result` (JSON-able); also returns the modules it loaded."""
    wrapper = code + "\nimport json, sys\nprint(json.dumps({'result': result, 'modules': sorted(sys.modules)}))\n"
    proc = subprocess.run(
        [sys.executable, "-c", wrapper],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["modules"] = set(out["modules"])
    return out


def test_auto_device_without_a_gpu_is_answered_without_torch():
    out = fresh(
        "from rsyn.command import Run\n"
        "from rsyn.models.device import resolve_device, resolve_faiss_device\n"
        "run = Run('test', quiet=True)\n"
        "result = [resolve_device('auto'), resolve_faiss_device('auto'), resolve_device('cpu'), "
        "run.faiss_device, run.summary()['device']]",
        NO_GPU,
    )
    assert out["result"] == ["cpu"] * 5
    assert "torch" not in out["modules"] and "faiss" not in out["modules"]


def test_asking_for_cuda_without_a_gpu_is_a_one_line_error(tmp_path):
    from conftest import rsyn

    records = [
        {
            "id": "t0",
            "kind": "text",
            "doc": "d",
            "pos": 0,
            "text": "a dog",
            "emb": encode_embeddings(np.eye(1, 8, dtype=np.float32))[0],
            "emb_model": "m",
        }
    ]
    (tmp_path / "s.jsonl").write_bytes(jsonl(records))
    proc = rsyn("index", tmp_path / "s.jsonl", "-o", tmp_path / "idx", "--device", "cuda", env=NO_GPU)
    assert proc.returncode == 2
    assert proc.stderr.decode().strip().splitlines() == [
        "rsyn: error: --device cuda: no CUDA device is available (use --device cpu or auto)"
    ]


def test_a_faiss_stage_with_device_auto_does_not_import_torch(tmp_path):
    rows = np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32)
    records = [
        {"id": f"t{i}", "kind": "text", "doc": "d", "pos": i, "text": f"sentence {i}", "emb": e, "emb_model": "m"}
        for i, e in enumerate(encode_embeddings(rows))
    ]
    (tmp_path / "s.jsonl").write_bytes(jsonl(records))
    out = fresh(
        "import sys\nfrom rsyn.cli import app\n"
        f"sys.argv = ['rsyn', 'index', {str(tmp_path / 's.jsonl')!r}, '--clusters', '2', '-q', "
        f"'-o', {str(tmp_path / 'idx')!r}]\n"
        "try:\n    app()\nexcept SystemExit as exc:\n    result = exc.code\n",
        NO_GPU,
    )
    assert out["result"] in (0, None)
    assert (tmp_path / "idx" / "meta.json").exists()
    assert "faiss" in out["modules"] and "torch" not in out["modules"]


def test_open_clip_for_a_plain_clip_skips_timm_and_transformers_which_stay_importable(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "open_clip_config.json").write_text(
        json.dumps(
            {
                "model_cfg": {
                    "embed_dim": 32,
                    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8},
                    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
                }
            }
        )
    )
    timm_based = tmp_path / "timm"
    timm_based.mkdir()
    (timm_based / "open_clip_config.json").write_text(
        json.dumps(
            {
                "model_cfg": {
                    "embed_dim": 32,
                    "vision_cfg": {"timm_model_name": "vit_tiny_patch16_224", "image_size": 32},
                    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
                }
            }
        )
    )
    out = fresh(
        "import sys\nfrom rsyn.models.imports import import_open_clip\n"
        f"oc = import_open_clip('local-dir:{plain}')\n"
        "before = ['timm' in sys.modules, 'transformers' in sys.modules, oc.timm_model.timm is None]\n"
        "import importlib.util\n"
        "findable = importlib.util.find_spec('timm') is not None\n"  # no None left behind in sys.modules
        f"import_open_clip('local-dir:{timm_based}')\n"  # a later model that needs timm gets it
        "result = before + [findable, oc.timm_model.timm is not None]"
    )
    assert out["result"] == [False, False, True, True, True]


def test_spacy_loads_without_torch():
    out = fresh(
        "from rsyn.filters import load_spacy, resolve_spacy_model\n"
        "nlp = load_spacy(resolve_spacy_model('auto'))\n"
        "result = [t.dep_ for t in nlp('The dog chased the cat.')]"
    )
    assert "spacy" in out["modules"] and "torch" not in out["modules"]
    assert "nsubj" in out["result"] and "dobj" in out["result"]


def test_report_tokenizer_counts_like_open_clip_without_torch():
    texts = ["A photo of a dog.", "Ünïcödé &amp; <b>html</b>  spaces", "", "x" * 300]
    out = fresh(
        "from rsyn.models.imports import clip_bpe_tokenizer\n"
        f"result = [clip_bpe_tokenizer().encode(t) for t in {texts!r}]"
    )
    assert "torch" not in out["modules"]
    from open_clip.tokenizer import SimpleTokenizer

    assert out["result"] == [SimpleTokenizer().encode(t) for t in texts]


def run_cli(argv: list, env: dict | None = None) -> dict:
    """Run `rsyn ARGV` in a fresh interpreter (in-process there, through the CLI); its exit code and modules."""
    out = fresh(
        "import sys\nfrom rsyn.cli import app\n"
        f"sys.argv = ['rsyn', *{[str(a) for a in argv]!r}]\n"
        "try:\n    app()\nexcept SystemExit as exc:\n    result = exc.code\n",
        env,
    )
    assert out["result"] in (0, None)
    return out


def image_record(i: int) -> dict:
    return {
        "id": f"img{i}",
        "kind": "image",
        "doc": "https://doc/0",
        "url": f"http://example.org/{i}.jpg",
        "texts": [{"id": f"t{i}", "text": f"a retrieved text {i}", "score": 0.25 + i}],
        "caption": "a photo",
        "tags": ["photo"],
        "syn_text": f"a synthetic text {i}",
        "sim": 0.5,
        "cluster": i,
    }


def test_pack_and_a_report_without_figures_import_neither_pandas_nor_matplotlib_nor_torch(tmp_path):
    (tmp_path / "in.jsonl").write_bytes(jsonl([image_record(i) for i in range(3)]))
    packed = tmp_path / "packed"
    out = run_cli(
        ["pack", tmp_path / "in.jsonl", "--extra-columns", "-q", "--stats", tmp_path / "pack.json", "-o", packed],
        NO_GPU,
    )
    assert "pyarrow.parquet" in out["modules"]
    assert not {"pandas", "torch"} & out["modules"]
    out = run_cli(["report", tmp_path / "pack.json", "--packed", packed, "-q", "-o", tmp_path / "r.html"], NO_GPU)
    assert "pyarrow" in out["modules"]
    assert not {"pandas", "matplotlib", "torch", "open_clip"} & out["modules"]
    assert "Packed texts" in (tmp_path / "r.html").read_text()


def test_pack_table_equals_pyarrow_from_pylist():
    import pyarrow as pa

    from rsyn.stages.pack import release_row, release_schema, rows_table

    schema = release_schema(extra_columns=True)
    records = [image_record(i) for i in range(3)]
    records[0].update(sim=1e300, cluster=2**63 - 1, syn_text='nul \x00, é, \U0001f600, \\ " quotes')
    records[1].update(sim=0.1, cluster=-(2**63), tags=[], texts=[], caption=None, syn_text=None)
    records[2].update(sim=1.0000000596046448, tags=None)  # halfway between two float32: rounds to even
    rows = [release_row(r, True) for r in records]
    assert all(isinstance(r, dict) for r in rows)
    assert rows_table(rows, schema).equals(pa.Table.from_pylist(rows, schema=schema))
    assert rows_table([], schema).equals(pa.Table.from_pylist([], schema=schema))


def test_near_dedup_skips_scipy_integrate_and_datasketch_lsh_still_gets_the_same_parameters(tmp_path):
    records = [{"id": f"t{i}", "kind": "text", "doc": "d", "pos": i, "text": "the same words here"} for i in range(3)]
    (tmp_path / "t.jsonl").write_bytes(jsonl(records))
    out = run_cli(["dedup", tmp_path / "t.jsonl", "--mode", "near", "-q", "-o", tmp_path / "d.jsonl"], NO_GPU)
    assert "datasketch" in out["modules"] and "scipy.integrate" not in out["modules"]
    lsh = "lsh = datasketch.MinHashLSH(threshold=0.7, num_perm=64)\nresult = [lsh.b, lsh.r]"
    after = fresh(f"from rsyn.models.imports import import_datasketch\ndatasketch = import_datasketch()\n{lsh}")
    plain = fresh(f"import datasketch\n{lsh}")
    assert after["result"] == plain["result"]
    assert "scipy.integrate" in after["modules"]  # imported for real when the search ran


def test_torchvision_for_open_clip_skips_torch_dynamo_which_stays_usable(tmp_path):
    out = fresh(
        "import sys\nfrom rsyn.models.imports import import_open_clip\n"
        "import_open_clip()\n"
        "before = 'torch._dynamo' in sys.modules or 'torch._dynamo.utils' in sys.modules\n"
        "import torch, torchvision\n"
        "boxes = torch.tensor([[0, 0.0, 0.0, 3.0, 3.0]])\n"
        "pooled = torchvision.ops.roi_align(torch.arange(16.0).reshape(1, 1, 4, 4), boxes, output_size=2)\n"
        "import torch._dynamo.utils\n"
        "result = [before, pooled.flatten().tolist(), torch._dynamo.utils.is_compile_supported('cpu')]"
    )
    before, pooled, supported = out["result"]
    assert before is False
    assert "torch._dynamo" in out["modules"]  # roi_align asked the real one
    assert supported is True and len(pooled) == 4


def test_report_tokenizer_builds_one_bpe_table():
    # open_clip's tokenizer module builds a default SimpleTokenizer as it loads: that one is used, not a second
    out = fresh(
        "import gc\nfrom rsyn.models.imports import clip_bpe_tokenizer\n"
        "tok = clip_bpe_tokenizer()\n"
        "result = sum(type(o).__name__ == 'SimpleTokenizer' for o in gc.get_objects())"
    )
    assert out["result"] == 1
