"""The columns of prepared examples: what `inputs` writes into the cached dataset and the `collator` reads back.

Their one home, below both modules, so that neither has to import the other for a name.
"""

# The tokenized caption, unpadded (the collator pads each batch to its own longest caption).
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
LENGTH = "length"  # caption length in tokens, for the Trainer's length-grouped sampler
TEXT_EMBEDS = "text_embeds"  # the frozen text tower's embedding of the caption, float32 (D,)
IMAGE_FEATURES = "image_features"  # the frozen vision tower's feature maps, float32 (C, H, W)
IMAGE_EMBEDS = "image_embeds"  # the frozen vision tower's image embedding, float32 (D,)
PIXELS = "pixels"  # the resized image, uint8 (3, H, W); the collator normalises it
# The example's position in the training split: added by RGCL's trainer (`rgcl.py`) to find the example's mined
# neighbours; the collator passes it through.
DATASET_INDEX = "dataset_index"

__all__ = ["DATASET_INDEX", "IMAGE_EMBEDS", "IMAGE_FEATURES", "LENGTH", "PIXELS", "TEXT_EMBEDS", "TEXT_INPUTS"]
