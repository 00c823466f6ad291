"""Model loading in one place: CLIP (open_clip), causal LMs and captioners (transformers), devices."""
