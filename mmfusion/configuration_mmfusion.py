"""Configuration for mmfusion models: a text tower, a vision tower and how they are fused.

Copied next to every checkpoint (remote code): it imports only transformers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from transformers import AutoConfig, BertConfig, PretrainedConfig, ResNetConfig

from .pipeline_mmfusion import custom_pipelines_entry  # imported so the pipeline file is copied beside the config


@dataclass(frozen=True)
class FusionType:
    """A fusion's registry entry: the module class that implements it and what config checks and model cards read.

    Adding a fusion is one `nn.Module` class in `modeling_mmfusion.py` (named by `module`) plus one entry in
    `FUSIONS`; the config's validation, the model, `train.py --fusion`, the model card and the conformance tests
    all read this registry.
    """

    module: str  # class name in modeling_mmfusion.py
    uses_image_tokens: bool  # reads the feature grid pooled to `num_image_tokens` tokens (else the global average)
    title: str  # short name, e.g. in model card titles
    description: str  # one paragraph for model cards, formatted with the config's attributes
    # Reads one text vector and one image vector (`MMFusionModel.text_embeddings` / `image_embeddings`): works with
    # any pair of towers, and with both towers frozen both vectors can be computed once and cached.
    reads_embeddings: bool = False
    # Runs image tokens through the text encoder: needs a bidirectional BERT-like text tower.
    needs_bert_like_text: bool = False
    needs_text: bool = True  # False: no text tower is built and the caption is not needed
    needs_image: bool = True  # False: no vision tower is built and no image input is needed


FUSIONS = {
    "early": FusionType(
        module="MMFusionEarlyFusion",
        uses_image_tokens=True,
        title="early-fusion",
        description=(
            "The vision tower's feature grid is pooled to {num_image_tokens} image tokens, projected into the text "
            "tower's embedding space with their own position and modality embeddings, and encoded together with the "
            "caption's tokens by the text transformer (MMBT-style early fusion); the classifier reads the first token."
        ),
        needs_bert_like_text=True,
    ),
    "concat": FusionType(
        module="MMFusionConcatFusion",
        uses_image_tokens=False,
        title="late-fusion (concat)",
        description=(
            "Late fusion: the image embedding is concatenated with the text embedding (the towers' projected "
            "embeddings for a dual encoder such as CLIP, else their pooled outputs) and a linear classifier reads "
            "the result."
        ),
        reads_embeddings=True,
    ),
    "attention": FusionType(
        module="MMFusionAttentionFusion",
        uses_image_tokens=True,
        title="attention-fusion",
        description=(
            "Both modalities are projected to {fusion_hidden_size} dimensions ({num_image_tokens} image tokens and "
            "the caption's tokens) and mixed by {fusion_num_heads}-head attention over the joint token set before "
            "the classifier."
        ),
    ),
    # Interaction and score-level fusions on one text vector and one image vector (issue 11).
    "cross": FusionType(
        module="MMFusionCrossFusion",
        uses_image_tokens=False,
        title="cross-fusion (Hate-CLIPper)",
        description=(
            "Hate-CLIPper's cross fusion (Kumar & Nandakumar, 2022): the text and image embeddings are mapped by "
            "trainable linear layers to {fusion_map_dim} dimensions and L2-normalised; their outer product (the "
            "{fusion_map_dim}x{fusion_map_dim} feature interaction matrix), flattened, goes through "
            "{fusion_num_pre_output_layers} pre-output layer(s) (linear, ReLU, dropout) before the classifier."
        ),
        reads_embeddings=True,
    ),
    "align": FusionType(
        module="MMFusionAlignFusion",
        uses_image_tokens=False,
        title="align-fusion (Hate-CLIPper)",
        description=(
            "Hate-CLIPper's align fusion: the text and image embeddings are mapped by trainable linear layers to "
            "{fusion_map_dim} dimensions and L2-normalised; their element-wise product goes through "
            "{fusion_num_pre_output_layers} pre-output layer(s) (linear, ReLU, dropout) before the classifier."
        ),
        reads_embeddings=True,
    ),
    "late": FusionType(
        module="MMFusionLateFusion",
        uses_image_tokens=False,
        title="late-fusion (score averaging)",
        description=(
            "MMF's score-level late fusion: a text head and an image head (each a {fusion_hidden_size}-unit MLP) "
            "score the example separately and their logits are averaged; no interaction between the modalities."
        ),
        reads_embeddings=True,
    ),
    # Unimodal baselines (the Hateful Memes paper's Text BERT / Image-Grid, MMF's unimodal_text / unimodal_image):
    # what the fused model must beat, trained the same way.
    "text": FusionType(
        module="MMFusionTextOnly",
        uses_image_tokens=False,
        title="text-only",
        description=(
            "Unimodal text baseline: the text tower alone ({text_pooling} pooling of the caption) and a linear "
            "classifier; no image is read."
        ),
        reads_embeddings=True,
        needs_image=False,
    ),
    "image": FusionType(
        module="MMFusionImageOnly",
        uses_image_tokens=False,
        title="image-only",
        description=(
            "Unimodal image baseline: the vision tower's pooled features (projected, for a dual encoder) and a "
            "linear classifier; no caption is read."
        ),
        reads_embeddings=True,
        needs_text=False,
    ),
}
FUSION_TYPES = tuple(FUSIONS)
# Towers of contrastive dual encoders (CLIP, SigLIP): their pooled output is the tower's own embedding head (CLIP's
# [EOS]/[CLS] token after the final LayerNorm, SigLIP's last token / attention-pooling head), not an average of its
# states, and their text towers are not BERT-like (CLIP's is causal; neither takes token types).
DUAL_ENCODER_TOWERS = frozenset(
    {
        "clip_text_model",
        "clip_vision_model",
        "siglip_text_model",
        "siglip_vision_model",
        "siglip2_text_model",
        "siglip2_vision_model",
    }
)
# How fusions that read one vector for the caption get it from the text tower: "pooler" (the tower's pooler, the
# first token's state where it has none), "cls" (the first token's last hidden state), "mean" (mean over the real
# tokens, what sentence-transformers models such as all-MiniLM-L6-v2 were trained with).
TEXT_POOLINGS = ("pooler", "cls", "mean")
# At most 7x7 image tokens by default: what a ResNet gives at 224 px, and the cost of early fusion grows with it.
MAX_DEFAULT_IMAGE_GRID = 7

# Written into every saved config so that a Hub user's `Auto*.from_pretrained(..., trust_remote_code=True)` finds the
# classes in the files saved next to the weights, whichever of the model classes was saved.
AUTO_MAP = {
    "AutoConfig": "configuration_mmfusion.MMFusionConfig",
    "AutoModel": "modeling_mmfusion.MMFusionModel",
    "AutoModelForSequenceClassification": "modeling_mmfusion.MMFusionForClassification",
}


def _as_config(value, default_model_type: str) -> PretrainedConfig:
    if value is None:
        return AutoConfig.for_model(default_model_type)
    if isinstance(value, PretrainedConfig):
        return value
    if isinstance(value, dict):
        value = dict(value)
        return AutoConfig.for_model(value.pop("model_type", default_model_type), **value)
    raise TypeError(f"Expected a config, a dict or None, got {type(value).__name__}")


def vision_feature_size(vision_config: PretrainedConfig) -> int:
    """Channels of the vision tower's last feature map (CNNs) or width of its tokens (ViT-like towers)."""
    hidden_sizes = getattr(vision_config, "hidden_sizes", None)
    if hidden_sizes:
        return hidden_sizes[-1]
    return vision_config.hidden_size


_PATCH_GRID_TOWERS = {"vit", "deit", "dinov2", "clip_vision_model", "siglip_vision_model"}


def vision_grid_size(vision_config: PretrainedConfig, image_size: int) -> int | None:
    """Side of the square feature grid the vision tower gives for a square `image_size` input, when known.

    ResNet: the stem halves the side twice (7x7 conv, max pool), every stage after the first halves it again
    (224 -> 7). ViT-like towers: one token per patch. Other towers: unknown (checked at run time instead).
    """
    if vision_config.model_type == "resnet":
        halvings = 2 + len(vision_config.depths) - 1 + int(vision_config.downsample_in_first_stage)
        side = image_size
        for _ in range(halvings):
            side = math.ceil(side / 2)
        return side
    patch_size = getattr(vision_config, "patch_size", None)
    if isinstance(patch_size, int) and getattr(vision_config, "model_type", "") in _PATCH_GRID_TOWERS:
        return image_size // patch_size
    return None


def default_num_image_tokens(vision_config: PretrainedConfig, image_size: int) -> int:
    """The tower's whole feature grid at `image_size`, pooled down to at most 7x7 = 49 tokens (49 when unknown)."""
    grid = vision_grid_size(vision_config, image_size) or MAX_DEFAULT_IMAGE_GRID
    return min(grid, MAX_DEFAULT_IMAGE_GRID) ** 2


class MMFusionConfig(PretrainedConfig):
    r"""
    Configuration of an image+text classifier made of a text tower, a vision tower and a fusion module.

    Args:
        text_config (`dict` or `PretrainedConfig`, *optional*):
            Config of the text tower: any BERT-like encoder (`bert`, `roberta`, `electra`, ...), or for the fusions
            that read only the pooled text embedding (`concat`, `cross`, `align`, `late`, attention too) any text
            encoder, e.g. the text tower of a CLIP or SigLIP checkpoint. Defaults to the shape of
            `bert-base-uncased`.
        vision_config (`dict` or `PretrainedConfig`, *optional*):
            Config of the vision tower: any transformers vision model whose last hidden state is a feature map
            (ResNet, ConvNeXt, ...) or a token sequence (ViT). Defaults to the shape of `microsoft/resnet-50`.
            torchvision ResNets are expressed as the equivalent `ResNetConfig` (see
            `mmfusion.torchvision_resnet`): their weights are converted once at load time, so a checkpoint never
            needs torchvision.
        fusion (`str`, *optional*, defaults to `"early"`):
            One of `FUSION_TYPES` (the registry `FUSIONS`). `"early"`: image grid tokens are projected into the text tower's embedding space and run through the
            text encoder together with the caption (MMBT-style). `"concat"`: pooled image features concatenated
            with the text tower's pooled output (late fusion). `"attention"`: both modalities projected to
            `fusion_hidden_size` and mixed by multi-head attention over the joint token set. `"cross"` /
            `"align"`: Hate-CLIPper's interaction fusions on the text and image embeddings (outer product /
            element-wise product of their trainable maps). `"late"`: MMF's score-level late fusion (a text head and
            an image head, logits averaged).
        num_image_tokens (`int`, *optional*):
            Image tokens given to early/attention fusion: the feature grid (7x7 = 49 for a ResNet at 224 px) is
            average-pooled to a `sqrt(n) x sqrt(n)` grid, so `n` must be a square no larger than the grid. Defaults
            to the vision tower's grid at `image_size`, at most 7x7 = 49 (49 for towers whose grid is not known
            in advance).
        image_size (`int`, *optional*, defaults to 224):
            Side of the square images the processor produces; used to check `num_image_tokens` and for export.
        fusion_hidden_size (`int`, *optional*, defaults to 512):
            Width of the joint space of attention fusion.
        fusion_num_heads (`int`, *optional*, defaults to 8):
            Attention heads of attention fusion.
        projection_dim (`int`, *optional*):
            Width of a dual encoder's joint embedding space. When set, the model has `text_projection` and
            `visual_projection` (linear, no bias, as in CLIP) that map the towers' pooled outputs into it: the text
            and image embeddings that `concat`, `cross`, `align` and `late` read. `from_text_vision_pretrained` sets
            it, with the weights, for a CLIP checkpoint; SigLIP's towers carry their heads inside, so it stays unset.
            The projections belong to their towers (frozen with them).
        fusion_map_dim (`int`, *optional*, defaults to 32):
            `cross`/`align`: width of the trainable maps of the text and image embeddings (Hate-CLIPper's
            `map_dim`; the outer product has `fusion_map_dim**2` entries) and of the pre-output layers.
        fusion_num_pre_output_layers (`int`, *optional*, defaults to 1):
            `cross`/`align`: linear + ReLU + dropout layers between the fused features and the classifier.
        fusion_map_dropout (`float`, *optional*, defaults to 0.1):
            `cross`/`align`: dropout after the maps (Hate-CLIPper's first dropout).
        fusion_pre_output_dropout (`float`, *optional*, defaults to 0.4):
            `cross`/`align`: dropout on the fused features, before the pre-output layers (Hate-CLIPper's second);
            the dropout after each pre-output layer is `classifier_dropout` (its third).
        classifier_dropout (`float`, *optional*, defaults to 0.1):
            Dropout before the classifier (and inside attention fusion).
        freeze_text_encoder (`bool`, *optional*, defaults to `False`):
            Keep the text tower's weights fixed (no gradients, eval mode).
        freeze_vision_encoder (`bool`, *optional*, defaults to `False`):
            Keep the vision tower's weights fixed (no gradients, eval mode so BatchNorm statistics stay put). Frozen
            towers let training reuse precomputed image features.
        modality_dropout (`float`, *optional*, defaults to 0.0):
            During training, the probability that an example loses one of its two modalities (image features zeroed
            or caption reduced to its first token), so that neither modality can carry the model alone.
        text_pooling (`str`, *optional*, defaults to `"pooler"`):
            How the caption becomes one vector for the fusions that read one (`early`, and through
            `MMFusionModel.text_embeddings` `concat`, `cross`, `align`, `late`, `text`): `"pooler"` (the text
            tower's pooled output: BERT's pooler, CLIP's [EOS] state; the first token where it has none), `"cls"`
            (the first token's state) or `"mean"` (mean over the caption's real tokens). `from_text_vision_pretrained`
            defaults it to the pooling a sentence-transformers checkpoint was trained with.
        image_gate (`bool`, *optional*, defaults to `False`):
            Start training from the text tower's own behaviour and let the image in only as far as training opens a
            learned gate. `early`: the attention every position pays to the image tokens is scaled by a learned
            factor that starts at 1e-3 (its log added to their attention logits). `attention`: the image tokens are
            scaled by `tanh(g)`, g starting at 0, and the output is read from the caption's tokens (which attend to
            the image tokens). `concat`: the image embedding is scaled by `tanh(g)`, g starting at 0. Other fusions
            ignore it. `False` (the default, and what configs saved before this option mean) lets the image in
            ungated; `from_text_vision_pretrained` (and so `train.py` with pretrained towers) turns it on.
    """

    model_type = "mmfusion"
    sub_configs = {"text_config": AutoConfig, "vision_config": AutoConfig}

    def __init__(
        self,
        text_config: dict | PretrainedConfig | None = None,
        vision_config: dict | PretrainedConfig | None = None,
        fusion: str = "early",
        num_image_tokens: int | None = None,
        image_size: int = 224,
        fusion_hidden_size: int = 512,
        fusion_num_heads: int = 8,
        projection_dim: int | None = None,
        fusion_map_dim: int = 32,
        fusion_num_pre_output_layers: int = 1,
        fusion_map_dropout: float = 0.1,
        fusion_pre_output_dropout: float = 0.4,
        classifier_dropout: float = 0.1,
        freeze_text_encoder: bool = False,
        freeze_vision_encoder: bool = False,
        modality_dropout: float = 0.0,
        text_pooling: str = "pooler",
        image_gate: bool = False,
        **kwargs,
    ):
        self.text_config = _as_config(text_config, BertConfig.model_type)
        self.vision_config = _as_config(vision_config, ResNetConfig.model_type)
        self.fusion = fusion
        self.image_size = image_size
        if num_image_tokens is None:
            num_image_tokens = default_num_image_tokens(self.vision_config, image_size)
        self.num_image_tokens = num_image_tokens
        self.fusion_hidden_size = fusion_hidden_size
        self.fusion_num_heads = fusion_num_heads
        self.projection_dim = projection_dim
        self.fusion_map_dim = fusion_map_dim
        self.fusion_num_pre_output_layers = fusion_num_pre_output_layers
        self.fusion_map_dropout = fusion_map_dropout
        self.fusion_pre_output_dropout = fusion_pre_output_dropout
        self.classifier_dropout = classifier_dropout
        self.freeze_text_encoder = freeze_text_encoder
        self.freeze_vision_encoder = freeze_vision_encoder
        self.modality_dropout = modality_dropout
        self.text_pooling = text_pooling
        self.image_gate = image_gate
        kwargs["auto_map"] = {**AUTO_MAP, **(kwargs.get("auto_map") or {})}
        # Every saved checkpoint is a pipeline: pipeline("image-text-classification", model=..., trust_remote_code=True)
        kwargs.setdefault("custom_pipelines", custom_pipelines_entry())
        super().__init__(**kwargs)
        if self.id2label and not self.label2id:
            # transformers 5 no longer derives one mapping from the other; pipelines and users expect both
            self.label2id = {label: int(index) for index, label in self.id2label.items()}
        self.validate_fusion_settings()

    @property
    def text_hidden_size(self) -> int:
        return self.text_config.hidden_size

    @property
    def vision_feature_size(self) -> int:
        return vision_feature_size(self.vision_config)

    @property
    def text_embed_dim(self) -> int:
        """Width of the text embedding (`MMFusionModel.text_embeddings`): projected, else the tower's pooled output."""
        if self.projection_dim:
            return self.projection_dim
        if self.text_pooling != "pooler":  # a token state, not the tower's pooling head
            return self.text_config.hidden_size
        return getattr(self.text_config, "projection_size", None) or self.text_config.hidden_size

    @property
    def image_embed_dim(self) -> int:
        """Width of the image embedding (`MMFusionModel.image_embeddings`): projected, else the pooled features."""
        return self.projection_dim or self.vision_feature_size

    def validate_fusion_settings(self) -> None:
        """Fail at construction, with a message that says what to change, rather than deep inside `forward`."""
        if self.fusion not in FUSIONS:
            raise ValueError(f"Unknown fusion type {self.fusion!r}; expected one of {', '.join(FUSION_TYPES)}.")
        if getattr(self.text_config, "hidden_size", None) is None:
            raise ValueError(
                f"The text tower ({self.text_config.model_type}) must be a BERT-like encoder with a `hidden_size`."
            )
        heads = getattr(self.text_config, "num_attention_heads", None)
        if heads and self.text_config.hidden_size % heads:
            raise ValueError(
                f"The text tower's hidden_size ({self.text_config.hidden_size}) must be divisible by its "
                f"num_attention_heads ({heads})."
            )
        if getattr(self.text_config, "is_decoder", False):
            raise ValueError("The text tower must be a bidirectional encoder; got a config with is_decoder=True.")
        if self.text_pooling not in TEXT_POOLINGS:
            raise ValueError(f"text_pooling must be one of {', '.join(TEXT_POOLINGS)}; got {self.text_pooling!r}.")
        if not 0.0 <= self.modality_dropout < 1.0:
            raise ValueError(f"modality_dropout must be in [0, 1), got {self.modality_dropout}.")
        side = math.isqrt(max(self.num_image_tokens, 0))
        if self.num_image_tokens < 1 or side * side != self.num_image_tokens:
            raise ValueError(
                f"num_image_tokens must be a positive square (1, 4, 9, ..., 49), got {self.num_image_tokens}: "
                "the image feature grid is pooled to a square grid."
            )
        grid = vision_grid_size(self.vision_config, self.image_size)
        if FUSIONS[self.fusion].uses_image_tokens and grid is not None and side > grid:
            raise ValueError(
                f"num_image_tokens={self.num_image_tokens} asks for more image tokens than the vision tower's "
                f"{grid}x{grid} feature grid has at image_size={self.image_size} ({grid * grid} at most)."
            )
        fusion = FUSIONS[self.fusion]
        if fusion.needs_bert_like_text and self.text_config.model_type in DUAL_ENCODER_TOWERS:
            working = [name for name, other in FUSIONS.items() if not other.needs_bert_like_text]
            raise ValueError(
                f"fusion={self.fusion!r} runs the image tokens through the text encoder, which needs a bidirectional "
                f"BERT-like encoder taking token types; the {self.text_config.model_type} text tower is not one. "
                f"With this tower use fusion= {', '.join(working)}."
            )
        if self.fusion in ("cross", "align") and (self.fusion_map_dim < 1 or self.fusion_num_pre_output_layers < 0):
            raise ValueError(
                f"fusion_map_dim must be >= 1 and fusion_num_pre_output_layers >= 0; got {self.fusion_map_dim} and "
                f"{self.fusion_num_pre_output_layers}."
            )
        if self.fusion == "early":
            max_positions = getattr(self.text_config, "max_position_embeddings", None)
            if max_positions is not None and max_positions < 2:
                raise ValueError("Early fusion needs a text tower with position embeddings for the caption.")
        if self.fusion == "attention" and self.fusion_hidden_size % self.fusion_num_heads:
            raise ValueError(
                f"fusion_hidden_size ({self.fusion_hidden_size}) must be divisible by fusion_num_heads "
                f"({self.fusion_num_heads})."
            )


MMFusionConfig.register_for_auto_class()

__all__ = [
    "DUAL_ENCODER_TOWERS",
    "FUSIONS",
    "FUSION_TYPES",
    "FusionType",
    "TEXT_POOLINGS",
    "MMFusionConfig",
    "default_num_image_tokens",
    "vision_feature_size",
    "vision_grid_size",
]
