"""Tiny RANDOM-WEIGHT models for tests, examples and benchmarks: a CLIP, a GPT-2 and a BLIP captioner.

Nothing is downloaded: each builder writes a small model with random weights
(labelled as such) and a locally built tokenizer to a folder, which loads
through the same loaders as a real model (`rsyn.models.clip.load_clip`,
`rsyn.models.lm.load_causal_lm`, `rsyn.models.captioner.load_captioner`) and
from the command line. They prove that the code paths work; their embeddings,
perplexities and captions mean nothing. Same seed, same weights.

Used by tests/, bin/make-tiny-models (and so examples/Makefile) and benchmarks/;
no command imports this module.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from rsyn.models.clip import LOCAL_DIR

# --------------------------------------------------------------------------- a tiny random CLIP

# A few small layers: big enough to be a real CLIP (both towers, projection,
# the standard BPE tokenizer), small enough to load and run in a test in well
# under a second.
TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def build_tiny_clip(directory: str | os.PathLike, seed: int = 0) -> str:
    """Write a tiny random-weight open_clip model to `directory`; return the spec that loads it.

    The folder is open_clip's `local-dir:` format, so the model loads through
    the same path as any downloaded model, from a fresh process and from the
    command line (`rsyn embed --model local-dir:DIR`). Same seed, same weights.
    """
    import open_clip
    import torch

    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "model_cfg": TINY_CONFIG,
        "preprocess_cfg": {
            "mean": list(OPENAI_MEAN),
            "std": list(OPENAI_STD),
            "interpolation": "bicubic",
            "resize_mode": "shortest",
        },
        "rsyn_note": f"tiny CLIP with RANDOM weights (seed {seed}) for tests; its embeddings mean nothing",
    }
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.CLIP(**TINY_CONFIG)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    (directory / "open_clip_config.json").write_text(json.dumps(config, indent=2) + "\n")
    torch.save(state, directory / "open_clip_pytorch_model.bin")
    return LOCAL_DIR + str(directory)


# --------------------------------------------------------------------------- a tiny random GPT-2

_TRAINING_SENTENCES = [
    "A dog runs across the green field in the morning.",
    "Two children are playing with a red ball on the beach.",
    "The chef cooks pasta in a large kitchen.",
    "A woman rides her bicycle through the busy city street.",
    "Snow covers the mountains behind the small wooden house.",
    "The cat sleeps on a sofa next to the window.",
    "People walk along the river while the sun sets.",
    "An old man reads a newspaper at the train station.",
    "Birds fly over the lake and the trees move in the wind.",
    "The team celebrates after winning the football match.",
    "Visit our website for more information about prices and offers.",
    "Click here to download the free guide, 100% guaranteed!",
]


def build_tiny_gpt2(directory, seed: int = 0) -> str:
    """Save a tiny GPT-2 (random weights, labelled as such) and a locally trained BPE tokenizer.

    Nothing is downloaded: the tokenizer is a byte-level BPE trained with
    `tokenizers` on a dozen built-in sentences, wrapped as a GPT2TokenizerFast.
    Returns the directory, loadable with `load_causal_lm(directory, ...)` or
    `--ppl-model DIRECTORY`. Its perplexities are meaningless but deterministic.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    special = "<|endoftext|>"
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=[special],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(_TRAINING_SENTENCES, trainer=trainer)
    tokenizer = GPT2TokenizerFast(
        tokenizer_object=bpe, bos_token=special, eos_token=special, unk_token=special, pad_token=special
    )
    tokenizer.model_max_length = 128
    tokenizer.save_pretrained(directory)

    special_id = tokenizer.convert_tokens_to_ids(special)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=128,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=special_id,
        eos_token_id=special_id,
        pad_token_id=special_id,
        name_or_path="rsyn-tiny-gpt2-random-weights",
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config)
    model.save_pretrained(directory)
    (directory / "README.md").write_text(
        "Tiny GPT-2 with RANDOM weights, built by rsyn for tests. Its perplexities mean nothing.\n"
    )
    return str(directory)


# --------------------------------------------------------------------------- a tiny random BLIP captioner

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
