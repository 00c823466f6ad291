"""CLIP models through open_clip: one loader for every stage.

A model is loaded from one *spec* string (`Clip.spec`):

- `local-dir:/abs/dir`   open_clip's folder form (open_clip_config.json + weights);
- `hf-hub:org/repo`      a Hugging Face Hub repository in open_clip's format;
- `NAME@PRETRAINED`      a built-in open_clip architecture with a pretrained tag
                         (`EVA02-E-14-plus@laion2b_s9b_b144k`), a checkpoint file
                         (`ViT-B-32@/abs/ckpt.pt`), or `random` (seeded random weights,
                         labelled as such so nobody mistakes them for a trained model).

`load_clip(model, pretrained, device)` also takes the two halves apart, as
the command line does (`--model ViT-B-32 --pretrained laion2b_s34b_b79k`).

Records carry the model's *identity* (`Clip.name`, written as `emb_model`):
the spec itself for a hub repository or a pretrained tag, which `load_clip`
accepts back; for a model on local disk its folder's (or checkpoint's)
basename and content hash (rsyn.models.identity), the same from any path or
machine, e.g. `tiny-clip#0123456789abcdef` or `ViT-B-32@ckpt.pt#0123...`.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from rsyn.vectors import unit_rows

DEFAULT_MODEL = "EVA02-E-14-plus"
DEFAULT_PRETRAINED = "laion2b_s9b_b144k"
RANDOM = "random"  # the --pretrained value for seeded random weights
RANDOM_SEED = 0

LOCAL_DIR = "local-dir:"
HF_HUB = "hf-hub:"


# --------------------------------------------------------------------------- the loaded model


class Clip:
    """A loaded open_clip model: unit-norm float32 embeddings of images and texts."""

    def __init__(
        self, name: str, model: Any, preprocess: Any, tokenizer: Any, device: str, dtype: Any, spec: str | None = None
    ):
        import torch

        self.name = name  # the identity records carry as emb_model
        self.spec = spec or name  # what load_clip loads it from
        self.model = model
        self.preprocess = preprocess  # PIL image -> float32 tensor (C, H, W)
        self.tokenizer = tokenizer
        self._tokenize = _fast_tokenizer(tokenizer)
        self.device = device
        self.dtype = dtype
        self.image_size = _image_size(model)
        # Workers hand over uint8 pixels (4x less to copy than float32); the device scales and
        # normalises them, exactly as ToTensor + Normalize would on the CPU.
        self._pil_steps, mean, std = _split_preprocess(preprocess)
        if self._pil_steps is not None:
            self._mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
            self._std = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self._text_tower = _causal_text_tower(model)
        with torch.inference_mode():
            self.dim = int(self.encode_texts([""]).shape[1])
            self.trims_padding = self._text_tower is not None and self._trimming_matches()

    def __repr__(self) -> str:
        return f"Clip({self.name!r}, dim={self.dim}, device={self.device!r})"

    def tokenize(self, texts: list[str]):
        """Token ids (n, context_length) for a batch of texts (long texts are truncated)."""
        return self._tokenize(list(texts))

    def prepare(self, image):
        """PIL image -> what encode_images takes: (3, H, W) uint8 pixels, or the float tensor of .preprocess."""
        import torch

        if self._pil_steps is None:
            return self.preprocess(image)
        pixels = np.array(self._pil_steps(image), dtype=np.uint8)
        return torch.from_numpy(pixels).permute(2, 0, 1)

    def encode_images(self, batch) -> np.ndarray:
        """A (n, 3, H, W) tensor (float from .preprocess, or uint8 from .prepare), or a list of PIL
        images -> (n, dim) unit rows."""
        import torch

        if isinstance(batch, (list, tuple)):
            batch = torch.stack([self.preprocess(image) for image in batch])
        with torch.inference_mode():
            pixels = batch.to(self.device, non_blocking=True)
            if pixels.dtype == torch.uint8:
                pixels = pixels.to(torch.float32).div_(255).sub_(self._mean).div_(self._std)
            return _as_unit_array(self.model.encode_image(pixels.to(self.dtype)))

    def encode_tokens(self, tokens, trim: bool = True) -> np.ndarray:
        """Token ids -> unit rows. With a causal text tower, the padding after the longest text
        is cut off first: the end-of-text token cannot see it, so only the work changes."""
        import torch

        with torch.inference_mode():
            tokens = tokens.to(self.device, non_blocking=True)
            if trim and getattr(self, "trims_padding", False):
                return _as_unit_array(self._encode_trimmed(tokens))
            return _as_unit_array(self.model.encode_text(tokens))

    def token_lengths(self, tokens) -> np.ndarray:
        """Length of each tokenized text up to its end-of-text token (the largest id, by CLIP's BPE)."""
        return tokens.argmax(dim=-1).cpu().numpy() + 1

    def _encode_trimmed(self, tokens):
        # open_clip's own text forward (CLIP.encode_text / TextTransformer.forward), on the first
        # `length` positions: the same modules, the positional embedding and causal mask cut to size
        from open_clip.transformer import text_global_pool

        tower = self._text_tower
        length = int(tokens.argmax(dim=-1).max()) + 1
        tokens = tokens[:, :length]
        cast_dtype = tower.transformer.get_cast_dtype()
        x = tower.token_embedding(tokens).to(cast_dtype) + tower.positional_embedding[:length].to(cast_dtype)
        x = tower.transformer(x, attn_mask=tower.attn_mask[:length, :length])
        x = text_global_pool(tower.ln_final(x), tokens, "argmax")
        projection = tower.text_projection
        if projection is not None:
            x = projection(x) if callable(projection) and not hasattr(projection, "ndim") else x @ projection
        return x

    def _trimming_matches(self) -> bool:
        """Checked once per load: trimmed and full-length text features agree, else trimming stays off."""
        probe = self.tokenize(["", "a photo", "a brown dog is carrying a kite near the harbour at dawn"])
        try:
            full = self.encode_tokens(probe, trim=False)
            trimmed = _as_unit_array(self._encode_trimmed(probe.to(self.device)))
        except Exception:  # an architecture this shortcut does not fit
            return False
        tolerance = 1e-4 if self.dtype == torch_float32() else 2e-2
        return bool(np.abs(full - trimmed).max() <= tolerance)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """Texts -> (n, dim) unit rows, tokenized as one batch."""
        if not texts:
            return np.zeros((0, getattr(self, "dim", 0)), dtype=np.float32)
        return self.encode_tokens(self.tokenize(texts))


def _fast_tokenizer(tokenizer):
    """open_clip's tokenizer, or the same ids for less work where rsyn.models.clip_tokens applies."""
    from rsyn.models.clip_tokens import FastClipTokenizer

    return FastClipTokenizer(tokenizer) if FastClipTokenizer.applies(tokenizer) else tokenizer


def torch_float32():
    import torch

    return torch.float32


def _causal_text_tower(model):
    """The module holding a causal, EOT-pooled CLIP text transformer (whose padding can be cut), else None."""
    import open_clip
    from open_clip.transformer import TextTransformer

    if type(model) is open_clip.CLIP:
        tower, pool = model, getattr(model, "text_pool_type", None)
    elif isinstance(getattr(model, "text", None), TextTransformer):
        tower, pool = model.text, getattr(model.text, "pool_type", None)
        if getattr(tower, "cls_emb", None) is not None or getattr(tower, "use_pad_mask", False):
            return None
    else:
        return None  # Hugging Face text towers (bidirectional) and others: full length
    if pool != "argmax" or getattr(tower, "attn_mask", None) is None:
        return None
    return tower


def _split_preprocess(preprocess):
    """(PIL steps, mean, std) of an open_clip eval transform ending in ToTensor + Normalize, else Nones."""
    from torchvision.transforms import Compose, Normalize, ToTensor

    steps = getattr(preprocess, "transforms", None)
    if steps and len(steps) >= 2 and isinstance(steps[-1], Normalize) and isinstance(steps[-2], ToTensor):
        return Compose(steps[:-2]), list(steps[-1].mean), list(steps[-1].std)
    return None, None, None


def _as_unit_array(features) -> np.ndarray:
    # normalise in float32: half-precision norms would leave rows visibly off unit length
    return unit_rows(np.ascontiguousarray(features.detach().float().cpu().numpy(), dtype=np.float32))


def _image_size(model) -> int:
    size = getattr(getattr(model, "visual", None), "image_size", 224)
    if isinstance(size, (tuple, list)):
        return int(max(size))
    return int(size)


# --------------------------------------------------------------------------- loading

_CACHE: dict[tuple, Clip] = {}
_LOCK = threading.Lock()


def clear_clip_cache(spec: str | None = None) -> None:
    """Forget loaded models (all, or those of one spec), e.g. after rebuilding a model folder in place."""
    with _LOCK:
        for key in [k for k in _CACHE if spec is None or k[0] == spec]:
            del _CACHE[key]


def model_spec(model: str, pretrained: str | None = None) -> str:
    """The canonical spec of (model, pretrained): the string records carry as `emb_model`.

    Raises ValueError for a combination that names no model.
    """
    from rsyn.models.identity import is_local_identity

    model = (model or "").strip()
    pretrained = (pretrained or "").strip() or None
    if not model:
        raise ValueError("empty --model")
    if is_local_identity(model) and not os.path.exists(model):
        raise ValueError(
            f"{model} names a model on local disk by its folder and content hash, not where it is: "
            "pass its folder, --model DIR"
        )
    if model.startswith(LOCAL_DIR):
        path = model[len(LOCAL_DIR) :]
        if pretrained:
            raise ValueError(f"--pretrained {pretrained} cannot be used with {model} (the folder holds the weights)")
        return LOCAL_DIR + str(Path(path).expanduser().resolve())
    if model.startswith(HF_HUB):
        if pretrained:
            raise ValueError(
                f"--pretrained {pretrained} cannot be used with {model} (the repository holds the weights)"
            )
        return model
    if os.path.isdir(model):  # a folder in open_clip's format, given as a plain path
        if pretrained:
            raise ValueError(f"--pretrained {pretrained} cannot be used with the model folder {model}")
        return LOCAL_DIR + str(Path(model).expanduser().resolve())
    if "@" in model:
        name, _, inline = model.partition("@")
        if pretrained and pretrained != inline:
            raise ValueError(f"--model {model} already names its weights; drop --pretrained {pretrained}")
        model, pretrained = name, inline
    if not pretrained:
        raise ValueError(
            f"--model {model} needs --pretrained: a tag (see `python -m open_clip.pretrained`), "
            f"a checkpoint file, or '{RANDOM}' for random weights"
        )
    if pretrained != RANDOM and os.path.exists(os.path.expanduser(pretrained)):
        pretrained = str(Path(pretrained).expanduser().resolve())
    return f"{model}@{pretrained}"


def load_clip(
    model: str = DEFAULT_MODEL, pretrained: str | None = None, device: str = "cpu", precision: str = "auto"
) -> Clip:
    """Load (once per process) the CLIP model a spec names, on `device`.

    precision: auto (fp16 on CUDA, fp32 on CPU), fp32, fp16 or bf16. Failures
    (unknown name, weights not on disk while offline, a bad checkpoint) raise
    RsynError with one line that says what to do.
    """
    from rsyn.errors import RsynError

    if model == DEFAULT_MODEL and not pretrained:
        pretrained = DEFAULT_PRETRAINED
    try:
        spec = model_spec(model, pretrained)
    except ValueError as exc:
        raise RsynError(str(exc)) from None
    precision = _resolve_precision(precision, device)
    key = (spec, device, precision)
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = _load(spec, device, precision)
        return _CACHE[key]


def _resolve_precision(precision: str, device: str) -> str:
    from rsyn.errors import RsynError

    precision = (precision or "auto").lower()
    if precision not in ("auto", "fp32", "fp16", "bf16"):
        raise RsynError(f"--precision {precision!r}: expected auto, fp32, fp16 or bf16")
    on_cuda = device.startswith("cuda")
    if precision == "auto":
        return "fp16" if on_cuda else "fp32"
    if not on_cuda and precision != "fp32":
        raise RsynError(f"--precision {precision} needs a CUDA device (CPU runs in fp32)")
    return precision


def _load(spec: str, device: str, precision: str) -> Clip:
    import logging

    import torch

    from rsyn.errors import RsynError
    from rsyn.models.imports import import_open_clip

    open_clip = import_open_clip(spec)

    if spec.startswith((LOCAL_DIR, HF_HUB)):
        model_name, pretrained = spec, None
        if spec.startswith(HF_HUB):
            from rsyn.models.hub import require_hub_model

            require_hub_model(
                spec[len(HF_HUB) :],
                "CLIP model",
                "pass --model local-dir:DIR (a folder in open_clip's format)",
                probe_file="open_clip_config.json",
            )
    else:
        model_name, _, pretrained = spec.partition("@")
    random_weights = pretrained == RANDOM
    if pretrained is not None and model_name.replace("/", "-") not in open_clip.list_models():
        raise RsynError(
            f"cannot load CLIP model {spec}: {model_name!r} is not an open_clip architecture "
            f"(see open_clip.list_models()); a model folder is --model local-dir:DIR"
        )
    # open_clip logs warnings (random init, missing weights) on the root logger; our
    # summary and errors say it in one line instead
    root = logging.getLogger()
    saved_level = root.level
    root.setLevel(logging.CRITICAL)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)  # random weights, when asked for, are the same in every run
            model, _, preprocess = open_clip.create_model_and_transforms(
                model_name,
                pretrained=None if random_weights else pretrained,
                device=device,
                precision=precision,
                load_weights=not random_weights,
            )
        tokenizer = open_clip.get_tokenizer(model_name)
    except Exception as exc:  # open_clip raises many types; all mean "cannot load this model"
        raise RsynError(_load_failure(spec, exc)) from None
    finally:
        root.setLevel(saved_level)
    model.eval()
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)
    return Clip(clip_identity(spec), model, preprocess, tokenizer, device, dtype, spec=spec)


def clip_identity(spec: str) -> str:
    """The emb_model of a spec: itself, but a local folder or checkpoint by basename and content hash."""
    from rsyn.models.identity import local_identity

    if spec.startswith(LOCAL_DIR):
        return local_identity(spec[len(LOCAL_DIR) :])
    name, at, pretrained = spec.partition("@")
    if at and pretrained != RANDOM and os.path.isabs(pretrained) and os.path.exists(pretrained):
        return f"{name}@{local_identity(pretrained)}"
    return spec


def _load_failure(spec: str, exc: Exception) -> str:
    reason = " ".join(str(exc).split())
    if len(reason) > 300:
        reason = reason[:300] + "..."
    message = f"cannot load CLIP model {spec}: {reason or type(exc).__name__}"
    if any(word in reason.lower() for word in ("offline", "download", "hub", "connection")):
        message += (
            "; the weights are not on this machine: download them once and pass "
            "--model NAME --pretrained /path/to/open_clip_pytorch_model.bin, or --model local-dir:DIR"
        )
    return message
