"""Configuration for mmfusion models: a text tower, a vision tower and how they are fused.

Copied next to every checkpoint (remote code): it imports only transformers and its flat siblings (the fusion
registry, whose fusions own their settings' defaults and validation).
"""

from __future__ import annotations

import math

from transformers import AutoConfig, BertConfig, PretrainedConfig, ResNetConfig

from .decisions import check_decision_threshold, check_temperature, is_multi_label
from .fusions import FUSIONS, FusionSetting, fusion_settings
from .memory import DEFAULT_KNN_K, check_prediction_mode
from .pipeline_mmfusion import custom_pipelines_entry  # imported so the pipeline file is copied beside the config

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
# The training objective: declared once here (stored in the config, so a checkpoint says how it was trained) and
# offered as train.py flags (`model_arguments_class`), like the fusions' settings. `rgcl`: RGCL's retrieval-guided
# contrastive loss beside the classification loss (`mmfusion.training.rgcl`).
OBJECTIVES = ("ce", "rgcl")
OBJECTIVE_SETTINGS = {
    "objective": FusionSetting(
        "ce",
        "Training objective: `ce`, the classification loss alone (cross-entropy; BCE per label for multi-label); "
        "`rgcl`, RGCL's retrieval-guided contrastive loss (hard negatives and pseudo-gold positives mined from the "
        "training split's embeddings, Mei et al. 2024) weighted `rgcl_loss_weight`, plus the classification loss "
        "weighted 1 - it. Single-label tasks.",
        choices=OBJECTIVES,
    ),
    "rgcl_k": FusionSetting(
        12,
        "(rgcl) Nearest training examples searched per example for its hard negative and "
        "pseudo-gold positive (itself excluded).",
    ),
    "rgcl_margin": FusionSetting(0.1, "(rgcl) Margin of the triplet loss."),
    "rgcl_loss_weight": FusionSetting(
        0.5, "(rgcl) Weight of the contrastive loss; the classification loss is weighted 1 - it."
    ),
    "rgcl_refresh_steps": FusionSetting(
        None,
        "(rgcl) Rebuild the retrieval index (the training split embedded by the model in eval mode) every this "
        "many optimizer steps; unset: at the start of every epoch, as RGCL does.",
        type=int,
    ),
}
# What a checkpoint's weights file holds of a joint model's vision-language model (see `vision_language_weights`).
VISION_LANGUAGE_WEIGHTS = ("full", "lora", "adapter")
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
            that do not run image tokens through it (all but those with `needs_bert_like_text`) any text encoder, e.g. the text tower of a CLIP or SigLIP checkpoint. Defaults to the shape of
            `bert-base-uncased`.
        vision_config (`dict` or `PretrainedConfig`, *optional*):
            Config of the vision tower: any transformers vision model whose last hidden state is a feature map
            (ResNet, ConvNeXt, ...) or a token sequence (ViT). Defaults to the shape of `microsoft/resnet-50`.
            torchvision ResNets are expressed as the equivalent `ResNetConfig` (see
            `mmfusion.torchvision_resnet`): their weights are converted once at load time, so a checkpoint never
            needs torchvision.
        fusion (`str`, *optional*, defaults to `"early"`):
            A name in the fusion registry `FUSIONS` (`fusions.py`: each fusion's class says what it does). Each
            fusion's own settings (listed below) are keyword arguments too.
        num_image_tokens (`int`, *optional*):
            Image tokens given to early/attention fusion: the feature grid (7x7 = 49 for a ResNet at 224 px) is
            average-pooled to a `sqrt(n) x sqrt(n)` grid, so `n` must be a square no larger than the grid. Defaults
            to the vision tower's grid at `image_size`, at most 7x7 = 49 (49 for towers whose grid is not known
            in advance).
        image_size (`int`, *optional*, defaults to 224):
            Side of the square images the processor produces; used to check `num_image_tokens` and for export.
        projection_dim (`int`, *optional*):
            Width of a dual encoder's joint embedding space. When set, the model has `text_projection` and
            `visual_projection` (linear, no bias, as in CLIP) that map the towers' pooled outputs into it: the text
            and image embeddings that the fusions reading embeddings (`Fusion.reads_embeddings`) read. `from_text_vision_pretrained` sets
            it, with the weights, for a CLIP checkpoint; SigLIP's towers carry their heads inside, so it stays unset.
            The projections belong to their towers (frozen with them).
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
            How the caption becomes one vector for the fusions that read one (`Fusion.uses_text_pooler`; through
            `MMFusionModel.text_embeddings` for those that read embeddings): `"pooler"` (the text
            tower's pooled output: BERT's pooler, CLIP's [EOS] state; the first token where it has none), `"cls"`
            (the first token's state) or `"mean"` (mean over the caption's real tokens). `from_text_vision_pretrained`
            defaults it to the pooling a sentence-transformers checkpoint was trained with.
        calibration_temperature (`float`, *optional*, defaults to 1.0):
            Probabilities are `softmax(logits / calibration_temperature)` in every inference path (predictor, ONNX, pipeline,
            app; see `decisions.py`). train.py fits it on the validation split after training (temperature
            scaling); it never changes the predicted class, only how confident the scores are.
        calibration (`dict`, *optional*):
            How `calibration_temperature` was fitted: the split, and its negative log-likelihood and expected calibration error
            before and after.
        decision_threshold (`float` or `list[float]`, *optional*):
            `None`: the predicted class is the most probable one. Two classes: the positive class (id 1) is
            predicted when its probability reaches this number, in [0, 1]. More classes: one threshold per class
            (one vs rest, see `decisions.py`). Multi-label (`problem_type="multi_label_classification"`): one
            threshold per label (or one for all; `None`: 0.5), every label reaching its threshold is predicted;
            train.py chooses them on the validation split (max F1 per label by default). Every inference path uses
            it; each takes a call-time override.
        decision_policy (`str`, *optional*):
            How `decision_threshold` was chosen: `"fixed"`, `"max_f1"`, `"precision=0.9"`, `"recall=0.9"`,
            `"fpr=0.01"` (see `mmfusion.evaluation.thresholds`).
        decision_figures (`dict`, *optional*):
            What the threshold met on the split it was chosen on (precision, recall, FPR, F1 per class).
        prediction_mode (`str`, *optional*, defaults to `"head"`):
            Where the probabilities come from (`memory.py`): `"head"` (the classifier), `"knn"` (RGCL's kNN score
            over the checkpoint's labelled memory, `memory.safetensors`) or `"mix"` (`mix_weight` of kNN, the rest
            head). train.py chooses it on the validation split when it builds the memory; every inference path uses it.
        knn_k (`int`, *optional*, defaults to 20):
            Neighbours the kNN score reads (rank weights `knn_k`..1).
        mix_weight (`float`, *optional*, defaults to 0.5):
            The kNN share of mode `"mix"`, in [0, 1].
        memory_selection (`dict`, *optional*):
            How the mode was chosen: the split, the metric and each candidate's value on it.
        vision_language_config (`dict` or `PretrainedConfig`, *optional*):
            `fusion="joint"`: the config of the image-text-to-text model that is the only tower (Qwen2-VL,
            Qwen2.5-VL, SmolVLM/Idefics3, ...; `AutoModelForImageTextToText`). The text and vision sub-configs are
            then unused.
        vision_language_model_name_or_path (`str`, *optional*):
            The checkpoint the vision-language model started from (`from_vision_language_pretrained` records it):
            where an adapter checkpoint loads its base weights from.
        vision_language_weights (`str`, *optional*, defaults to `"full"`):
            What `model.safetensors` holds of the vision-language model: `"full"` (every weight; LoRA merged or
            never used), `"lora"` (every weight with the LoRA layers unmerged, as training checkpoints are saved:
            loading needs peft) or `"adapter"` (only the LoRA weights and the head: loading reads the base model from
            `vision_language_model_name_or_path` and needs peft). See `mmfusion.vision_language`.
        answer_token_ids (`list[int]`, *optional*):
            `fusion="joint"`: the token id of each class's answer word ("No", "Yes" for two classes), the target of
            the answer-token loss (`answer_loss_weight`).
    """

    model_type = "mmfusion"
    # What the Trainer's predictions leave out: the retrieval embeddings are asked for explicitly (`embed`).
    keys_to_ignore_at_inference = ["embeddings"]
    sub_configs = {"text_config": AutoConfig, "vision_config": AutoConfig, "vision_language_config": AutoConfig}

    def __init__(
        self,
        text_config: dict | PretrainedConfig | None = None,
        vision_config: dict | PretrainedConfig | None = None,
        fusion: str = "early",
        num_image_tokens: int | None = None,
        image_size: int = 224,
        projection_dim: int | None = None,
        classifier_dropout: float = 0.1,
        freeze_text_encoder: bool = False,
        freeze_vision_encoder: bool = False,
        modality_dropout: float = 0.0,
        text_pooling: str = "pooler",
        calibration_temperature: float = 1.0,
        calibration: dict | None = None,
        decision_threshold: float | list[float] | None = None,
        decision_policy: str | None = None,
        decision_figures: dict | None = None,
        prediction_mode: str = "head",
        knn_k: int = DEFAULT_KNN_K,
        mix_weight: float = 0.5,
        memory_selection: dict | None = None,
        vision_language_config: dict | PretrainedConfig | None = None,
        vision_language_model_name_or_path: str | None = None,
        vision_language_weights: str = "full",
        answer_token_ids: list[int] | None = None,
        **kwargs,
    ):
        self.text_config = _as_config(text_config, BertConfig.model_type)
        self.vision_config = _as_config(vision_config, ResNetConfig.model_type)
        self.fusion = fusion
        self.image_size = image_size
        if num_image_tokens is None:
            num_image_tokens = default_num_image_tokens(self.vision_config, image_size)
        self.num_image_tokens = num_image_tokens
        self.projection_dim = projection_dim
        self.classifier_dropout = classifier_dropout
        self.freeze_text_encoder = freeze_text_encoder
        self.freeze_vision_encoder = freeze_vision_encoder
        self.modality_dropout = modality_dropout
        self.text_pooling = text_pooling
        self.calibration_temperature = calibration_temperature
        self.calibration = calibration
        self.decision_threshold = decision_threshold
        self.decision_policy = decision_policy
        self.decision_figures = decision_figures
        self.prediction_mode, self.knn_k, self.mix_weight = prediction_mode, knn_k, mix_weight
        self.memory_selection = memory_selection
        self.vision_language_config = (
            None if vision_language_config is None else _as_config(vision_language_config, "")
        )
        self.vision_language_model_name_or_path = vision_language_model_name_or_path
        self.vision_language_weights = vision_language_weights
        self.answer_token_ids = list(answer_token_ids) if answer_token_ids is not None else None
        # Every registered fusion's settings, with their defaults (what a config saved without one means): the
        # fusion's own where it has one (align: RGCL's head); None (an unset train.py flag) means the same.
        fusion_class = FUSIONS.get(fusion)
        for name, setting in fusion_settings().items():
            value = kwargs.pop(name, None)
            if value is None:
                value = fusion_class.default_setting(name) if fusion_class is not None else setting.default
            setattr(self, name, value)
        for name, setting in OBJECTIVE_SETTINGS.items():
            setattr(self, name, kwargs.pop(name, setting.default))
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
            raise ValueError(f"Unknown fusion type {self.fusion!r}; expected one of {', '.join(FUSIONS)}.")
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
        if self.vision_language_weights not in VISION_LANGUAGE_WEIGHTS:
            raise ValueError(
                f"vision_language_weights must be one of {', '.join(VISION_LANGUAGE_WEIGHTS)}; got "
                f"{self.vision_language_weights!r}."
            )
        if self.text_pooling not in TEXT_POOLINGS:
            raise ValueError(f"text_pooling must be one of {', '.join(TEXT_POOLINGS)}; got {self.text_pooling!r}.")
        self.calibration_temperature = check_temperature(self.calibration_temperature)
        num_labels = len(self.id2label) if self.id2label else None
        self.decision_threshold = check_decision_threshold(
            self.decision_threshold, num_labels, multi_label=is_multi_label(self)
        )
        self.prediction_mode, self.knn_k, self.mix_weight = check_prediction_mode(
            self.prediction_mode, self.knn_k, self.mix_weight
        )
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
            working = [n for n, other in FUSIONS.items() if not other.needs_bert_like_text and not other.joint_encoder]
            raise ValueError(
                f"fusion={self.fusion!r} runs the image tokens through the text encoder, which needs a bidirectional "
                f"BERT-like encoder taking token types; the {self.text_config.model_type} text tower is not one. "
                f"With this tower use fusion= {', '.join(working)}."
            )
        fusion.validate(self)
        self.validate_objective()

    def validate_objective(self) -> None:
        """The training objective's settings (`OBJECTIVE_SETTINGS`)."""
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}; got {self.objective!r}.")
        if self.rgcl_k < 1 or not 0.0 <= self.rgcl_loss_weight <= 1.0 or self.rgcl_margin < 0:
            raise ValueError(
                f"rgcl_k must be >= 1, rgcl_loss_weight in [0, 1] and rgcl_margin >= 0; got {self.rgcl_k}, "
                f"{self.rgcl_loss_weight} and {self.rgcl_margin}."
            )
        if self.rgcl_refresh_steps is not None and self.rgcl_refresh_steps < 1:
            raise ValueError(f"rgcl_refresh_steps must be >= 1 or unset; got {self.rgcl_refresh_steps}.")
        if self.objective == "rgcl" and (is_multi_label(self) or self.problem_type == "regression"):
            raise ValueError(
                f"objective='rgcl' needs single-label classes (a hard negative is the nearest example of another "
                f"class); this model is {self.problem_type}. Use objective='ce'."
            )


def _settings_docstring() -> str:
    """The config docstring's entries for the fusions' own settings, from the registry."""
    entries = []
    for name, setting in fusion_settings().items():
        users = ", ".join(f"`{fusion}`" for fusion, cls in FUSIONS.items() if name in cls.settings)
        own = "".join(
            f" (`{fusion}`: `{cls.setting_defaults[name]!r}`)"
            for fusion, cls in FUSIONS.items()
            if name in cls.setting_defaults
        )
        entries.append(
            f"        {name} (`{setting.value_type.__name__}`, *optional*, defaults to `{setting.default!r}`{own}):\n"
            f"            ({users}) {setting.help}"
        )
    objective = [
        f"        {name} (`{setting.value_type.__name__}`, *optional*, defaults to `{setting.default!r}`):\n"
        f"            {setting.help}"
        for name, setting in OBJECTIVE_SETTINGS.items()
    ]
    return (
        "\n    Fusion settings (declared by the fusions in `FUSIONS`; see `fusions.py`):\n\n"
        + "\n".join(entries)
        + "\n\n    Training objective (`OBJECTIVE_SETTINGS`):\n\n"
        + "\n".join(objective)
        + "\n"
    )


MMFusionConfig.__doc__ += _settings_docstring()
MMFusionConfig.register_for_auto_class()

__all__ = [
    "DUAL_ENCODER_TOWERS",
    "FUSIONS",
    "TEXT_POOLINGS",
    "OBJECTIVES",
    "OBJECTIVE_SETTINGS",
    "MMFusionConfig",
    "default_num_image_tokens",
    "vision_feature_size",
    "vision_grid_size",
]
