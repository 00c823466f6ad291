"""Image-to-text captioners (Hugging Face transformers): loading, batched captioning.

`rsyn caption` writes a brief caption of each image (the paper used OFA-base,
which transformers does not ship; our default is BLIP base, a captioner of the
same size and kind). Any model that `AutoModelForImageTextToText` loads and
that captions an image without a text prompt works: BLIP, GIT,
VisionEncoderDecoder (ViT-GPT2), Florence-2 and others, by Hugging Face id (from
the local cache when offline) or by local directory.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_CAPTIONER = "Salesforce/blip-image-captioning-base"

_CACHE: dict[tuple[str, str, str], Captioner] = {}


class Captioner:
    """A loaded captioning model: `caption(images) -> list[str]`, one brief caption per PIL image."""

    def __init__(self, name: str, model, image_processor, tokenizer, device: str, dtype):
        self.name = name
        self.model = model
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.device = device
        self.dtype = dtype

    @property
    def input_side(self) -> int | None:
        """The side, in pixels, the image processor resizes to (None when it does not say)."""
        size = getattr(self.image_processor, "size", None)
        if isinstance(size, int):
            return size
        # a dict, or transformers 5's SizeDict (attributes, unset ones None)
        sides = [
            size.get(k) if isinstance(size, dict) else getattr(size, k, None)
            for k in ("height", "width", "shortest_edge")
        ]
        sides = [v for v in sides if isinstance(v, int) and v > 0]
        return max(sides) if sides else None

    def caption(self, images: list, max_new_tokens: int = 30, num_beams: int = 3, batch_size: int = 32) -> list[str]:
        """Captions in input order; decoding is greedy or beam search, so the same images give the same text."""
        import torch

        captions: list[str] = []
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                chunk = [image.convert("RGB") for image in images[start : start + batch_size]]
                pixels = self.image_processor(images=chunk, return_tensors="pt")["pixel_values"]
                pixels = pixels.to(self.device, dtype=self.dtype)
                generated = self.model.generate(
                    pixel_values=pixels, max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=False
                )
                captions.extend(self.tokenizer.batch_decode(generated, skip_special_tokens=True))
        return [" ".join(text.split()) for text in captions]


def load_captioner(name_or_path: str, device: str, dtype: str = "auto") -> Captioner:
    """A Captioner for a Hugging Face id or a local directory, cached per process.

    fp16 (bf16 where supported) on CUDA, fp32 on CPU for dtype "auto".
    Raises RsynError (one line) when the model cannot be found, e.g. offline.
    """
    key = (str(name_or_path), device, dtype)
    if key in _CACHE:
        return _CACHE[key]
    from rsyn.models.hub import require_hub_model

    require_hub_model(
        name_or_path, "captioner", "pass a local model directory (see `hf download`), or --captioner none"
    )
    from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

    from rsyn.errors import RsynError, first_line
    from rsyn.models.identity import model_identity
    from rsyn.models.lm import _torch_dtype

    torch_dtype = _torch_dtype(dtype, device)
    try:
        try:
            processor = AutoProcessor.from_pretrained(name_or_path)
        except (OSError, ValueError, TypeError, KeyError):
            processor = None  # e.g. a VisionEncoderDecoder saved with an image processor and a tokenizer only
        image_processor = getattr(processor, "image_processor", None) or AutoImageProcessor.from_pretrained(
            name_or_path
        )
        tokenizer = getattr(processor, "tokenizer", None) or AutoTokenizer.from_pretrained(name_or_path)
        model = AutoModelForImageTextToText.from_pretrained(name_or_path, dtype=torch_dtype)
    except (OSError, ValueError, KeyError) as exc:
        where = "local directory" if Path(name_or_path).is_dir() else "Hugging Face id"
        reason = first_line(exc)
        raise RsynError(
            f"cannot load captioner {name_or_path!r} ({where}): {reason[:200]}. "
            "Offline, pass a local model directory (see `huggingface-cli download`), or --captioner none"
        ) from None
    model.to(device)
    model.eval()
    # records carry a stable identity: a local folder by its basename and content hash, not the path as typed
    captioner = Captioner(model_identity(str(name_or_path)), model, image_processor, tokenizer, device, torch_dtype)
    _CACHE[key] = captioner
    return captioner
