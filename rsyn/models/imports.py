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

import importlib
import importlib.util
import json
import sys
import types
from pathlib import Path

# open_clip module -> the optional library it looks for at import
_OPTIONAL = {"timm": ("open_clip.timm_model",), "transformers": ("open_clip.hf_model", "open_clip.coca_model")}
_hidden_at_import: set[str] = set()


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
    for library in hide:
        sys.modules[library] = None
    try:
        import open_clip
    finally:
        for library in hide:
            if sys.modules.get(library, 0) is None:
                del sys.modules[library]
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

    def is_compile_supported(*args, **kwargs):
        from torch._dynamo.utils import is_compile_supported as dynamo_is_compile_supported

        return dynamo_is_compile_supported(*args, **kwargs)

    stand_in = types.ModuleType(name)
    stand_in.is_compile_supported = is_compile_supported
    sys.modules[name] = stand_in
    try:
        import torchvision
    finally:
        if sys.modules.get(name) is stand_in:
            del sys.modules[name]
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
    sys.modules["torch"] = None
    try:
        import spacy
    finally:
        if sys.modules.get("torch", 0) is None:
            del sys.modules["torch"]
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
    sys.modules["torch"] = placeholder
    try:
        spec.loader.exec_module(module)
    finally:
        if sys.modules.get("torch") is placeholder:
            del sys.modules["torch"]
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

    def quad(*args, **kwargs):
        from scipy.integrate import quad as scipy_quad

        return scipy_quad(*args, **kwargs)

    stand_in.quad = quad
    sys.modules["scipy.integrate"] = stand_in
    try:
        import datasketch
    finally:
        if sys.modules.get("scipy.integrate") is stand_in:
            del sys.modules["scipy.integrate"]
    return datasketch
