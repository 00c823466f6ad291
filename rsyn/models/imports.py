"""Import the heavy libraries (models, datasketch) without the optional parts a run does not use.

open_clip imports timm and transformers (if installed) at its own import, for the few model
families that need them (timm vision towers, Hugging Face text towers and tokenizers, CoCa
generation); together they are most of open_clip's import time. Each of those imports sits in a
try/except ImportError in open_clip, which then leaves the family unavailable. So when the model
about to load needs neither, open_clip is imported with them hidden (a None entry in sys.modules
makes `import timm` raise ImportError), and un-hidden right after: the rest of the process may
still import them (a captioner does). If a later model in the same process does need one, the
open_clip modules that looked for it are re-executed so they see it.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import sys
import types
from pathlib import Path

# open_clip module -> the optional library it looks for at import
_OPTIONAL = {"timm": ("open_clip.timm_model",), "transformers": ("open_clip.hf_model", "open_clip.coca_model")}
_hidden_at_import: set[str] = set()


@contextlib.contextmanager
def _standing_in(entries: dict[str, object]):
    """sys.modules entries for the imports inside only: a module object stands in for the real one, None
    makes `import NAME` raise ImportError. Each is taken out after, unless an import replaced it."""
    sys.modules.update(entries)
    try:
        yield
    finally:
        for name, value in entries.items():
            if name in sys.modules and sys.modules[name] is value:
                del sys.modules[name]


def _calls_through(module: str, function: str):
    """A stand-in for `module.function` that imports the real one when first called (after the stand-in
    module is gone), so that what skipped the import still works."""

    def call(*args, **kwargs):
        return getattr(importlib.import_module(module), function)(*args, **kwargs)

    call.__name__ = function
    return call


def open_clip_needs(config: dict | None) -> set[str]:
    """The optional libraries a model config (open_clip's model_cfg) uses; all of them when unknown."""
    if not isinstance(config, dict):
        return set(_OPTIONAL)
    vision, text = config.get("vision_cfg") or {}, config.get("text_cfg") or {}
    needs = set()
    if not isinstance(vision, dict) or vision.get("timm_model_name"):
        needs.add("timm")
    if (
        not isinstance(text, dict)
        or text.get("hf_model_name")
        or text.get("hf_tokenizer_name")
        or "multimodal_cfg" in config
    ):
        needs.add("transformers")
    return needs


def open_clip_model_config(spec: str) -> dict | None:
    """open_clip's model_cfg for a spec, read from its JSON without importing open_clip; None if unknown."""
    try:
        if spec.startswith("local-dir:"):
            raw = json.loads((Path(spec[len("local-dir:") :]) / "open_clip_config.json").read_text())
            return raw.get("model_cfg")
        if spec.startswith("hf-hub:"):
            return None
        found = importlib.util.find_spec("open_clip")
        if found is None or not found.submodule_search_locations:
            return None
        name = spec.partition("@")[0].replace("/", "-")
        path = Path(next(iter(found.submodule_search_locations))) / "model_configs" / f"{name}.json"
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None


def import_open_clip(spec: str | None = None):
    """open_clip, imported with only the optional libraries that the model `spec` names needs
    (none when no model is named: open_clip's own tokenizer and CLIP class need neither)."""
    needs = open_clip_needs(open_clip_model_config(spec)) if spec is not None else set()
    if "open_clip" in sys.modules:
        for library in sorted(needs & _hidden_at_import):
            _hidden_at_import.discard(library)
            for module in _OPTIONAL[library]:
                importlib.reload(sys.modules[module])
        return sys.modules["open_clip"]
    import_torchvision()  # first, and alone: the stand-in it uses must not be seen by timm or transformers
    hide = [lib for lib in _OPTIONAL if lib not in needs and lib not in sys.modules]
    with _standing_in(dict.fromkeys(hide)):
        import open_clip
    _hidden_at_import.update(hide)
    return open_clip


def import_torchvision():
    """torchvision, imported without torch._dynamo when that is not loaded yet.

    Most of torchvision's import time (about as long as torch's own) and some 150 MiB are
    torch._dynamo, which its package import loads for one function, `is_compile_supported`, that only
    its detection ops (roi_align) call; open_clip needs torchvision's transforms. The import sees a
    stand-in `torch._dynamo.utils` whose function imports the real one when first called: the real
    torch._dynamo stays importable (transformers imports it), and roi_align works as before.
    """
    name = "torch._dynamo.utils"
    if "torchvision" in sys.modules or "torch._dynamo" in sys.modules:
        import torchvision

        return torchvision
    import torch  # noqa: F401 - loaded before the stand-in goes in, so that only torchvision's import sees it

    stand_in = types.ModuleType(name)
    stand_in.is_compile_supported = _calls_through(name, "is_compile_supported")
    with _standing_in({name: stand_in}):
        import torchvision
    return torchvision


def import_spacy():
    """spaCy, imported without torch when torch is not loaded yet.

    spaCy's thinc imports torch (seconds, hundreds of MiB) only to offer PyTorch layers and GPU ops;
    the CPU pipelines rsyn runs (tokenizer, tagger, parser) use thinc's numpy ops, so hiding torch
    from that import changes no result. torch stays importable for the rest of the process.
    """
    if "spacy" in sys.modules or "torch" in sys.modules:
        import spacy

        return spacy
    with _standing_in({"torch": None}):
        import spacy
    return spacy


def clip_bpe_tokenizer():
    """open_clip's SimpleTokenizer (CLIP's BPE), for counting tokens, without torch when it is not loaded.

    Its module imports torch only for tensor-returning helpers and annotations; `encode` is plain
    Python. Loading just that file with a placeholder for torch spares a report the import of torch
    (what that saves: README, "Start-up"). The module builds a default SimpleTokenizer when it loads (its
    `tokenize` function uses it): that one is returned rather than a second (each holds its own BPE tables).
    """
    if "torch" in sys.modules:
        return _default_simple_tokenizer(import_open_clip().tokenizer)
    found = importlib.util.find_spec("open_clip")
    if found is None or not found.submodule_search_locations:
        raise ImportError("open_clip is not installed")
    path = Path(next(iter(found.submodule_search_locations))) / "tokenizer.py"
    spec = importlib.util.spec_from_file_location("rsyn._open_clip_tokenizer", path)
    module = importlib.util.module_from_spec(spec)
    placeholder = types.ModuleType("torch")
    placeholder.__getattr__ = lambda name: object  # torch.LongTensor etc. in annotations
    with _standing_in({"torch": placeholder}):
        spec.loader.exec_module(module)
    return _default_simple_tokenizer(module)


def _default_simple_tokenizer(module):
    built = getattr(module, "_tokenizer", None)
    return built if type(built) is module.SimpleTokenizer else module.SimpleTokenizer()


def import_datasketch():
    """datasketch, imported without scipy.integrate when that is not loaded yet.

    datasketch's package import loads its LSH index classes, which import scipy.integrate (about 0.4 s
    and 55 MiB) for the parameter search a MinHashLSH runs when it is built. rsyn uses MinHash alone
    and picks its own banding (rsyn.stages.dedup.near.lsh_params). So the import sees a stand-in whose
    `quad` imports the real one when first called: a MinHashLSH built later in the process still
    gets scipy's integration, and the same parameters.
    """
    if "datasketch" in sys.modules or "scipy.integrate" in sys.modules:
        import datasketch

        return datasketch
    stand_in = types.ModuleType("scipy.integrate")
    stand_in.quad = _calls_through("scipy.integrate", "quad")
    with _standing_in({"scipy.integrate": stand_in}):
        import datasketch
    return datasketch
