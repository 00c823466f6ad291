"""Causal language models (Hugging Face transformers): loading, perplexity.

Used by `rsyn extract` (the perplexity filter, paper default `gpt2-large`) and by
`rsyn caption` (the CPU LLM backend). Models load through transformers' normal
loaders, so a Hugging Face id works when it is in the local cache and a local
directory always works (offline machines).

Perplexity of a text is exp of the mean negative log-likelihood (natural log) of
its tokens, each predicted from the ones before it. The tokenizer's BOS token
(`<|endoftext|>` for GPT-2) is put in front, so the first word is scored too and
a one-word text still has a perplexity; a text with no tokens gets NaN.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

_CACHE: dict[tuple[str, str, str], tuple] = {}

_DTYPE_NAMES = {
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
}


def _torch_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        if not device.startswith("cuda"):
            return torch.float32  # half precision on CPU is slow and imprecise
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    try:
        return getattr(torch, _DTYPE_NAMES[dtype.lower()])
    except KeyError:
        from rsyn.errors import RsynError

        raise RsynError(f"precision {dtype!r}: expected auto, fp32, bf16 or fp16") from None


def load_causal_lm(name_or_path: str, device: str, dtype: str = "auto"):
    """(model, tokenizer) for a Hugging Face id or a local directory, cached per process.

    The model is in eval mode on `device`; bf16 (or fp16) on CUDA, fp32 on CPU
    for dtype "auto". The tokenizer always has a pad token (EOS when it had none).
    Raises RsynError (one line) when the model cannot be found, e.g. offline.
    """
    key = (str(name_or_path), device, dtype)
    if key in _CACHE:
        return _CACHE[key]
    from rsyn.models.hub import require_hub_model

    require_hub_model(name_or_path, "causal LM", "pass a local model directory (made e.g. with `hf download`)")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from rsyn.errors import RsynError, first_line

    hf_logging.disable_progress_bar()  # rsyn reports progress itself; keep stderr to one line per event

    torch_dtype = _torch_dtype(dtype, device)
    # a Hugging Face id is "name" or "org/name"; anything else that is not on disk is a missing directory
    looks_like_path = name_or_path.startswith(("/", ".", "~")) or name_or_path.count("/") > 1
    if looks_like_path and not Path(name_or_path).expanduser().is_dir():
        raise RsynError(
            f"cannot load causal LM {name_or_path!r}: no such directory; "
            "offline, pass a local model directory (made e.g. with `hf download`)"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=torch_dtype)
    except (OSError, ValueError) as exc:
        where = "local directory" if Path(name_or_path).is_dir() else "Hugging Face id"
        reason = first_line(exc).rstrip(". ")
        raise RsynError(
            f"cannot load causal LM {name_or_path!r} ({where}): {reason[:200]}; "
            "offline, pass a local model directory (made e.g. with `hf download`)"
        ) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
    model.to(device)
    model.eval()
    _CACHE[key] = (model, tokenizer)
    return model, tokenizer


def _max_positions(model) -> int:
    config = model.config
    for name in ("n_positions", "max_position_embeddings"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 1024


def perplexities(texts: list[str], model, tokenizer, batch_size: int = 32) -> np.ndarray:
    """Perplexity of each text (float64 array, input order); NaN for a text with no tokens.

    Texts are tokenized once, sorted by length so a batch pads little, run in
    batches with the padding masked out of the loss, and put back in input order.
    Texts longer than the model's context are cut to it.
    """
    import torch

    result = np.full(len(texts), np.nan, dtype=np.float64)
    if not texts:
        return result
    bos = tokenizer.bos_token_id
    limit = _max_positions(model) - (1 if bos is not None else 0)
    ids = tokenizer(list(texts), add_special_tokens=False, truncation=True, max_length=limit)["input_ids"]
    if bos is not None:
        ids = [[bos, *row] for row in ids]
    lengths = np.fromiter((len(row) for row in ids), dtype=np.int64, count=len(ids))
    order = np.argsort(-lengths, kind="stable")  # longest first: an out-of-memory shows up at once
    order = order[lengths[order] >= 2]  # fewer than 2 tokens: nothing is predicted
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            width = int(lengths[batch[0]])
            tokens = np.full((len(batch), width), pad, dtype=np.int64)
            mask = np.zeros((len(batch), width), dtype=np.int64)
            for row, index in enumerate(batch):
                n = lengths[index]
                tokens[row, :n] = ids[index]
                mask[row, :n] = 1
            input_ids = torch.from_numpy(tokens).to(device)
            attention = torch.from_numpy(mask).to(device)
            logits = model(input_ids=input_ids, attention_mask=attention).logits[:, :-1].float()
            targets = input_ids[:, 1:]
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
            target_mask = attention[:, 1:].to(nll.dtype)
            mean_nll = (nll * target_mask).sum(1) / target_mask.sum(1)
            result[batch] = torch.exp(mean_nll).double().cpu().numpy()
    return result
