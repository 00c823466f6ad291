"""Image-to-text captioners (Hugging Face transformers): loading, batched captioning, a tiny BLIP for tests.

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


# --------------------------------------------------------------------------- a tiny random BLIP for tests

_WORDS = (
    "a an the of on in with and at by two dog cat man woman child car street house tree field beach "
    "red green blue small large old young white black sitting standing running playing walking "
    "photo picture view table food plate water sky city road people group"
).split()


def build_tiny_captioner(directory, seed: int = 0, image_size: int = 32) -> str:
    """Save a tiny BLIP captioner (random weights, labelled as such) with a locally built tokenizer.

    Nothing is downloaded: the WordPiece vocabulary is a few dozen built-in
    words. Returns the directory, loadable with `load_captioner(directory, ...)`
    or `--captioner DIRECTORY`. Its captions are random words, deterministic.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import (
        BertTokenizerFast,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
    vocab = {token: i for i, token in enumerate(specials + list(dict.fromkeys(_WORDS)))}
    wordpiece = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    wordpiece.normalizer = normalizers.BertNormalizer(lowercase=True)
    wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wordpiece.decoder = decoders.WordPiece()
    wordpiece.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    tokenizer = BertTokenizerFast(
        tokenizer_object=wordpiece,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        bos_token="[DEC]",
    )
    tokenizer.model_max_length = 64
    image_processor = BlipImageProcessor(size={"height": image_size, "width": image_size})
    BlipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(directory)

    config = BlipConfig(
        text_config=dict(
            vocab_size=len(vocab),
            hidden_size=32,
            encoder_hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=64,
            bos_token_id=vocab["[DEC]"],
            eos_token_id=vocab["[SEP]"],
            sep_token_id=vocab["[SEP]"],
            pad_token_id=vocab["[PAD]"],
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=8,
            initializer_range=0.02,
        ),
        projection_dim=32,
    )
    config.name_or_path = "rsyn-tiny-blip-random-weights"
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(config)
    model.save_pretrained(directory)
    (directory / "README.md").write_text(
        "Tiny BLIP captioner with RANDOM weights, built by rsyn for tests. Its captions mean nothing.\n"
    )
    return str(directory)
