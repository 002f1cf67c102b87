"""mmfusion models: a text tower and a vision tower joined by early, concat or attention fusion.

Copied next to every checkpoint (remote code): it imports only torch, transformers and its flat siblings.

Early fusion layout (deliberate): `[CLS] caption [SEP] <pad>... img_1 ... img_N`. The caption keeps the positions
the text tower was pretrained with, so [CLS] stays at position 0 and the classifier reads the token (and the pooler)
the tower was trained to summarise with; [CLS] attends to every image token. The notebook put the image tokens first
and still read position 0, which is then the first image token's output rather than [CLS]. Padding sits between the
caption and the image tokens; it is masked out, and image tokens carry their own position embeddings, so where they
sit in the sequence does not matter.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_outputs import BaseModelOutputWithPooling, SequenceClassifierOutput
from transformers.utils import ModelOutput
from transformers.utils.generic import can_return_tuple

from .configuration_mmfusion import FUSIONS, MMFusionConfig
from .torchvision_resnet import load_torchvision_resnet, torchvision_architecture

try:  # transformers' init functions skip weights that were loaded from a checkpoint
    from transformers import initialization as init
except ImportError:  # pragma: no cover - older transformers 5.x
    from torch.nn import init

TEXT, IMAGE = 0, 1  # rows of the modality embeddings


@dataclass
class MMFusionModelOutput(ModelOutput):
    """
    pooler_output (`torch.FloatTensor` of shape `(batch_size, fused_size)`):
        The fused image+text representation the classifier reads.
    last_hidden_state (`torch.FloatTensor` of shape `(batch_size, sequence_length, hidden_size)`, *optional*):
        The joint token sequence (caption tokens, then image tokens) for early and attention fusion.
    hidden_states (`tuple(torch.FloatTensor)`, *optional*):
        Text-encoder hidden states (embeddings, then one per layer) when `output_hidden_states` is set; with a list
        of layer indices, the entries not selected are `None`. Early fusion's encoder runs over caption and image
        tokens, so there they span both.
    attentions (`tuple(torch.FloatTensor)`, *optional*):
        The text encoder's attention weights, one `(batch, heads, length, length)` tensor per layer, when
        `output_attentions=True` (eager attention only, as in transformers).
    fusion_attentions (`torch.FloatTensor`, *optional*):
        Attention fusion's own weights over the joint token set, `(batch, fusion_num_heads, length, length)`, when
        `output_attentions=True`.
    """

    pooler_output: torch.FloatTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    fusion_attentions: torch.FloatTensor | None = None


@dataclass
class MMFusionClassifierOutput(SequenceClassifierOutput):
    """
    `SequenceClassifierOutput` plus `fusion_attentions`: attention fusion's own weights (see `MMFusionModelOutput`).
    """

    fusion_attentions: torch.FloatTensor | None = None


def image_tokens_from_features(image_features: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """(B, C, H, W) feature maps or (B, N, C) token sequences -> (B, num_tokens, C) by average pooling."""
    if image_features.dim() == 4:
        side = math.isqrt(num_tokens)
        height, width = image_features.shape[-2:]
        if height < side or width < side:
            raise ValueError(
                f"The vision tower gives a {height}x{width} feature grid, fewer cells than num_image_tokens="
                f"{num_tokens}; lower num_image_tokens or feed larger images."
            )
        if (height, width) != (side, side):
            image_features = F.adaptive_avg_pool2d(image_features, side)
        return image_features.flatten(2).transpose(1, 2)
    if image_features.dim() == 3:
        if image_features.shape[1] < num_tokens:
            raise ValueError(f"Got {image_features.shape[1]} image tokens, fewer than num_image_tokens={num_tokens}.")
        if image_features.shape[1] != num_tokens:
            image_features = F.adaptive_avg_pool1d(image_features.transpose(1, 2), num_tokens).transpose(1, 2)
        return image_features
    raise ValueError(f"image features must be (B, C, H, W) or (B, N, C); got shape {tuple(image_features.shape)}")


def pool_image_features(image_features: torch.Tensor) -> torch.Tensor:
    """Global average of the feature grid (what ResNet's own pooler computes) -> (B, C)."""
    if image_features.dim() == 4:
        return image_features.mean(dim=(-2, -1))
    return image_features.mean(dim=1)


def pool_text(
    text_model: nn.Module,
    last_hidden_state: torch.Tensor,
    attention_mask: torch.Tensor,
    pooler_output: torch.Tensor | None = None,
    pooling: str = "pooler",
) -> torch.Tensor:
    """The one vector a fusion reads for the caption (`config.text_pooling`); every such fusion calls this.

    `last_hidden_state` holds the caption's tokens first (early fusion passes its caption positions only),
    `attention_mask` marks the real ones. "pooler": `pooler_output` when the tower gave one, else the tower's pooler
    on the states, else the first token; "cls": the first token's state; "mean": the mean over the real tokens
    (sentence-transformers' pooling).
    """
    if pooling == "mean":
        keep = attention_mask[:, : last_hidden_state.shape[1]].unsqueeze(-1).to(last_hidden_state.dtype)
        return (last_hidden_state * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1.0)
    if pooling == "pooler":
        if pooler_output is not None:
            return pooler_output
        pooler = getattr(text_model, "pooler", None)
        if pooler is not None:
            return pooler(last_hidden_state)
    return last_hidden_state[:, 0]


def select_hidden_states(hidden_states: tuple, output_hidden_states) -> tuple:
    """transformers' convention for `output_hidden_states=[i, j, ...]`: the entries not selected become `None`."""
    if isinstance(output_hidden_states, bool):
        return hidden_states
    wanted = [output_hidden_states] if isinstance(output_hidden_states, int) else list(output_hidden_states)
    count = len(hidden_states)
    keep = {index % count for index in wanted if -count <= index < count}
    return tuple(state if index in keep else None for index, state in enumerate(hidden_states))


@contextmanager
def record_tower_outputs(tower: nn.Module, hidden_states: bool, attentions: bool):
    """Collect per-layer hidden states / attention weights of a tower we drive piecewise (early fusion).

    transformers towers declare which module classes produce them in `_can_record_outputs`; we hook those.
    """
    recorded = {"hidden_states": [], "attentions": []}
    specs = getattr(tower, "_can_record_outputs", None) or {}
    handles = []
    for key, wanted, default_index in (("hidden_states", hidden_states, 0), ("attentions", attentions, 1)):
        spec = specs.get(key)
        if not wanted or spec is None:
            continue
        target_class = getattr(spec, "target_class", spec)
        index = getattr(spec, "index", default_index)

        def hook(module, args, output, key=key, index=index):
            value = output[index] if isinstance(output, tuple) else output
            if value is not None:
                recorded[key].append(value)

        handles += [m.register_forward_hook(hook) for m in tower.modules() if isinstance(m, target_class)]
    try:
        yield recorded
    finally:
        for handle in handles:
            handle.remove()


class MMFusionEarlyFusion(nn.Module):
    """Image grid tokens projected into the text tower's embedding space and encoded with the caption (MMBT)."""

    # The text encoder runs over caption and image tokens: its hidden states and attentions span both.
    encodes_image_tokens = True
    uses_text_pooler = True

    def __init__(self, config: MMFusionConfig):
        super().__init__()
        text_config = config.text_config
        hidden_size = text_config.hidden_size
        self.image_projection = nn.Linear(config.vision_feature_size, hidden_size)
        self.image_position_embeddings = nn.Embedding(config.num_image_tokens, hidden_size)
        # Row TEXT is added to the word embeddings, row IMAGE to the image tokens. Both start at zero, so at
        # initialisation the caption is embedded exactly as the pretrained tower embeds it.
        self.modality_embeddings = nn.Embedding(2, hidden_size)
        self.image_layer_norm = nn.LayerNorm(hidden_size, eps=getattr(text_config, "layer_norm_eps", 1e-12))
        self.dropout = nn.Dropout(getattr(text_config, "hidden_dropout_prob", 0.1))
        self.output_size = hidden_size
        self.text_pooling = config.text_pooling
        # Zero-initialised (see `_init_weights`): the image tokens enter as zeros and grow only as training wants.
        self.image_gate = nn.Parameter(torch.zeros(1)) if config.image_gate else None

    def embed_image(self, image_tokens: torch.Tensor) -> torch.Tensor:
        embeddings = (
            self.image_projection(image_tokens)
            + self.image_position_embeddings.weight
            + self.modality_embeddings.weight[IMAGE]
        )
        embeddings = self.dropout(self.image_layer_norm(embeddings))
        return embeddings * torch.tanh(self.image_gate) if self.image_gate is not None else embeddings

    def forward(self, text_model, text_inputs, image_tokens, output_hidden_states=False, output_attentions=False):
        input_ids, inputs_embeds = text_inputs["input_ids"], text_inputs["inputs_embeds"]
        token_type_ids, attention_mask = text_inputs["token_type_ids"], text_inputs["attention_mask"]
        if inputs_embeds is None:
            inputs_embeds = text_model.get_input_embeddings()(input_ids)
        word_embeddings = inputs_embeds + self.modality_embeddings.weight[TEXT]
        # The tower's own embedding module adds its (pretrained) position and token-type embeddings and LayerNorm.
        text_embeddings = text_model.embeddings(inputs_embeds=word_embeddings, token_type_ids=token_type_ids)
        image_embeddings = self.embed_image(image_tokens.to(text_embeddings.dtype))
        joint = torch.cat([text_embeddings, image_embeddings], dim=1)
        image_mask = attention_mask.new_ones(image_embeddings.shape[:2])
        joint_mask = create_bidirectional_mask(
            config=text_model.config,
            inputs_embeds=joint,
            attention_mask=torch.cat([attention_mask, image_mask], dim=1),
        )
        with record_tower_outputs(text_model, bool(output_hidden_states), output_attentions) as recorded:
            sequence_output = text_model.encoder(joint, attention_mask=joint_mask).last_hidden_state
        hidden_states = None
        if output_hidden_states is not None and output_hidden_states is not False:
            hidden_states = select_hidden_states((joint, *recorded["hidden_states"]), output_hidden_states)
        attentions = tuple(recorded["attentions"]) if output_attentions else None
        caption_states = sequence_output[:, : attention_mask.shape[1]]
        return MMFusionModelOutput(
            pooler_output=pool_text(text_model, caption_states, attention_mask, None, self.text_pooling),
            last_hidden_state=sequence_output,
            hidden_states=hidden_states,
            attentions=attentions,
        )


class MMFusionConcatFusion(nn.Module):
    """Late fusion: pooled image features concatenated with the text tower's pooled output (the notebook's Part 1)."""

    encodes_image_tokens = False
    uses_text_pooler = True

    def __init__(self, config: MMFusionConfig):
        super().__init__()
        self.output_size = config.vision_feature_size + config.text_hidden_size
        self.text_pooling = config.text_pooling

    def forward(self, text_model, text_inputs, image_features, output_hidden_states=False, output_attentions=False):
        text_outputs = text_model(
            **text_inputs,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            return_dict=True,
        )
        text_pooled = pool_text(
            text_model,
            text_outputs.last_hidden_state,
            text_inputs["attention_mask"],
            getattr(text_outputs, "pooler_output", None),
            self.text_pooling,
        )
        image_pooled = pool_image_features(image_features).to(text_pooled.dtype)
        return MMFusionModelOutput(
            pooler_output=torch.cat([image_pooled, text_pooled], dim=-1),
            hidden_states=getattr(text_outputs, "hidden_states", None),
            attentions=getattr(text_outputs, "attentions", None),
        )


class MMFusionAttentionFusion(nn.Module):
    """Both modalities projected to one width and mixed by multi-head attention over the joint token set (the
    tutorial's FusionLayer), then mean-pooled over the real (unpadded) tokens."""

    encodes_image_tokens = False
    uses_text_pooler = False  # reads the token states

    def __init__(self, config: MMFusionConfig):
        super().__init__()
        width = config.fusion_hidden_size
        self.text_projection = nn.Linear(config.text_hidden_size, width)
        self.image_projection = nn.Linear(config.vision_feature_size, width)
        self.image_position_embeddings = nn.Embedding(config.num_image_tokens, width)
        self.modality_embeddings = nn.Embedding(2, width)
        self.attention = nn.MultiheadAttention(
            width, config.fusion_num_heads, dropout=config.classifier_dropout, batch_first=True
        )
        self.layer_norm = nn.LayerNorm(width)
        self.output_size = width
        # Zero-initialised gate on the image tokens; with it the output is the mean over the caption's tokens only
        # (which attend to the image tokens), so training starts from the text tower's states.
        self.image_gate = nn.Parameter(torch.zeros(1)) if config.image_gate else None

    def forward(self, text_model, text_inputs, image_tokens, output_hidden_states=False, output_attentions=False):
        text_outputs = text_model(
            **text_inputs,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            return_dict=True,
        )
        attention_mask = text_inputs["attention_mask"]
        text = self.text_projection(text_outputs.last_hidden_state) + self.modality_embeddings.weight[TEXT]
        image = (
            self.image_projection(image_tokens.to(text.dtype))
            + self.image_position_embeddings.weight
            + self.modality_embeddings.weight[IMAGE]
        )
        if self.image_gate is not None:
            image = image * torch.tanh(self.image_gate)
        joint = torch.cat([text, image], dim=1)
        is_padding = torch.cat([attention_mask == 0, attention_mask.new_zeros(image.shape[:2], dtype=torch.bool)], 1)
        attended, weights = self.attention(
            joint,
            joint,
            joint,
            key_padding_mask=is_padding,
            need_weights=bool(output_attentions),
            average_attn_weights=False,  # (batch, heads, length, length), like transformers' attentions
        )
        joint = self.layer_norm(joint + attended)
        keep = (~is_padding).unsqueeze(-1).to(joint.dtype)
        if self.image_gate is not None:
            keep[:, text.shape[1] :] = 0  # read the caption's tokens
        pooled = (joint * keep).sum(dim=1) / keep.sum(dim=1)
        return MMFusionModelOutput(
            pooler_output=pooled,
            last_hidden_state=joint,
            hidden_states=getattr(text_outputs, "hidden_states", None),
            attentions=getattr(text_outputs, "attentions", None),
            fusion_attentions=weights,
        )


class MMFusionTextOnly(nn.Module):
    """Unimodal text baseline: the text tower's pooled caption (`text_pooling`) is what the classifier reads."""

    encodes_image_tokens = False
    uses_text_pooler = True

    def __init__(self, config: MMFusionConfig):
        super().__init__()
        self.output_size = config.text_hidden_size
        self.text_pooling = config.text_pooling

    def forward(self, text_model, text_inputs, image_features, output_hidden_states=False, output_attentions=False):
        text_outputs = text_model(
            **text_inputs,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            return_dict=True,
        )
        pooled = pool_text(
            text_model,
            text_outputs.last_hidden_state,
            text_inputs["attention_mask"],
            getattr(text_outputs, "pooler_output", None),
            self.text_pooling,
        )
        return MMFusionModelOutput(
            pooler_output=pooled,
            last_hidden_state=text_outputs.last_hidden_state,
            hidden_states=getattr(text_outputs, "hidden_states", None),
            attentions=getattr(text_outputs, "attentions", None),
        )


class MMFusionImageOnly(nn.Module):
    """Unimodal image baseline: the vision tower's globally averaged features are what the classifier reads."""

    encodes_image_tokens = False
    uses_text_pooler = False

    def __init__(self, config: MMFusionConfig):
        super().__init__()
        self.output_size = config.vision_feature_size

    def forward(self, text_model, text_inputs, image_features, output_hidden_states=False, output_attentions=False):
        return MMFusionModelOutput(pooler_output=pool_image_features(image_features))


# The module class of every fusion in the registry (`configuration_mmfusion.FUSIONS`).
FUSION_MODULES = {name: globals()[fusion.module] for name, fusion in FUSIONS.items()}


class MMFusionPreTrainedModel(PreTrainedModel):
    config_class = MMFusionConfig
    config: MMFusionConfig
    base_model_prefix = "mmfusion"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True
    # The loss is a per-batch mean; without this the Trainer sees `**kwargs` in forward, assumes the model averages
    # over `num_items_in_batch` itself and multiplies the loss by the number of DDP processes.
    accepts_loss_kwargs = False

    @classmethod
    def _can_set_attn_implementation(cls) -> bool:
        # transformers guesses from the module source: a class named `*Attention*(nn.Module)` (our attention
        # fusion, whose nn.MultiheadAttention has no implementation switch) would make it refuse, and leave the
        # top-level config behind while the text tower switches. The towers decide for themselves.
        return True

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, (MMFusionEarlyFusion, MMFusionAttentionFusion)):
            init.zeros_(module.modality_embeddings.weight)
            if module.image_gate is not None:
                init.zeros_(module.image_gate)

    @classmethod
    def from_text_vision_pretrained(
        cls,
        text_model_name_or_path: str,
        vision_model_name_or_path: str,
        *,
        torchvision_weights: str | None = None,
        text_kwargs: dict | None = None,
        vision_kwargs: dict | None = None,
        **config_kwargs,
    ):
        """Build a model whose two towers start from pretrained checkpoints; the fusion layers start fresh.

        `vision_model_name_or_path` is a transformers vision model (`"microsoft/resnet-50"`, a local folder) or
        `"torchvision/<arch>"` for torchvision's ResNets (resnet18/34/50/101/152): torchvision's default ImageNet
        weights, or the state dict file given as `torchvision_weights`, converted to the equivalent transformers
        ResNet. Remaining keyword arguments go to `MMFusionConfig` (`fusion`, `num_labels`, `id2label`, ...);
        `image_gate` defaults to True here and `text_pooling` to a sentence-transformers checkpoint's own pooling.

        Example:
        ```python
        model = MMFusionForClassification.from_text_vision_pretrained(
            "bert-base-uncased", "microsoft/resnet-50", fusion="early", num_labels=2
        )
        ```
        """
        text_model = AutoModel.from_pretrained(text_model_name_or_path, **(text_kwargs or {}))
        architecture = torchvision_architecture(vision_model_name_or_path)
        if architecture:
            vision_model = load_torchvision_resnet(architecture, weights_path=torchvision_weights)
        else:
            vision_model = AutoModel.from_pretrained(vision_model_name_or_path, **(vision_kwargs or {}))
        # Fresh fusion layers must not spoil what the pretrained text tower knows: the image tokens start gated off.
        config_kwargs.setdefault("image_gate", True)
        if "text_pooling" not in config_kwargs:
            pooling = sentence_transformers_pooling(text_model_name_or_path)
            if pooling is not None:
                config_kwargs["text_pooling"] = pooling
        config = MMFusionConfig(text_config=text_model.config, vision_config=vision_model.config, **config_kwargs)
        model = cls(config)
        towers = model.base_model if model.base_model is not model else model
        if towers.text_model is not None:
            towers.text_model.load_state_dict(_matching_state(text_model, towers.text_model), strict=True)
        if towers.vision_model is not None:
            towers.vision_model.load_state_dict(vision_model.state_dict(), strict=True)
        return model


def sentence_transformers_pooling(name_or_path: str) -> str | None:
    """The `text_pooling` a sentence-transformers checkpoint was trained with (its `modules.json` and pooling
    module's `config.json`), or None for other checkpoints. Local folders and Hub repos (cache or download)."""
    import json

    from transformers.utils import cached_file

    def read_json(filename):
        try:
            path = cached_file(
                name_or_path,
                filename,
                _raise_exceptions_for_missing_entries=False,
                _raise_exceptions_for_connection_errors=False,
            )
        except OSError:
            return None
        if path is None:
            return None
        with open(path, encoding="utf-8") as file:
            return json.load(file)

    modules = read_json("modules.json")
    if not isinstance(modules, list):
        return None
    folder = next((m.get("path") for m in modules if str(m.get("type", "")).endswith("Pooling")), None)
    if folder is None:
        return None
    settings = read_json(f"{folder}/config.json") or {}
    mode = settings.get("pooling_mode")  # newer sentence-transformers write one string
    if mode in ("mean", "cls"):
        return mode
    if settings.get("pooling_mode_mean_tokens"):
        return "mean"
    if settings.get("pooling_mode_cls_token"):
        return "cls"
    return None  # max pooling and the like: no equivalent here, keep the default


def _output_flag(value, config: MMFusionConfig, name: str, tower: str):
    """An `output_*` flag as transformers resolves it: the argument, else the config's, else the tower sub-config's."""
    if value is not None:
        return value
    return getattr(config, name, None) or getattr(getattr(config, tower), name, None) or False


def _tower_from_config(sub_config):
    """Build a tower; `attn_implementation="sdpa"` given for the whole model applies where the tower has attention.

    transformers hands the requested implementation to every sub-config, and an attention-free CNN refuses "sdpa".
    """
    try:
        return AutoModel.from_config(sub_config)
    except ValueError as error:
        if "attention implementation" not in str(error):
            raise
        return AutoModel.from_config(sub_config, attn_implementation="eager")


def _matching_state(source: nn.Module, target: nn.Module) -> dict:
    """The source tower's weights that the target tower has (attention fusion drops the unused text pooler)."""
    wanted = target.state_dict().keys()
    return {key: value for key, value in source.state_dict().items() if key in wanted}


class MMFusionModel(MMFusionPreTrainedModel):
    """The two towers and the fusion module; returns the fused representation (`pooler_output`)."""

    def __init__(self, config: MMFusionConfig):
        super().__init__(config)
        fusion_type = FUSIONS[config.fusion]
        # Unimodal baselines build only the tower they read (no unused weights to save, load or leave gradient-less).
        self.text_model = _tower_from_config(config.text_config) if fusion_type.needs_text else None
        self.vision_model = _tower_from_config(config.vision_config) if fusion_type.needs_image else None
        fusion_class = FUSION_MODULES[config.fusion]
        reads_pooler = fusion_class.uses_text_pooler and config.text_pooling == "pooler"
        if not reads_pooler and getattr(self.text_model, "pooler", None) is not None:
            # e.g. attention fusion reads the token states, not the pooler; an unused module would make DDP complain.
            self.text_model.pooler = None
        self.fusion = fusion_class(config)
        self.post_init()
        for tower, frozen in (
            (self.text_model, config.freeze_text_encoder),
            (self.vision_model, config.freeze_vision_encoder),
        ):
            if frozen and tower is not None:
                tower.requires_grad_(False)

    @property
    def output_size(self) -> int:
        return self.fusion.output_size

    def train(self, mode: bool = True):
        # Frozen towers stay in eval mode: no dropout noise and, above all, no BatchNorm statistics drifting away
        # from the weights (which would also make precomputed image features stale).
        super().train(mode)
        if self.config.freeze_text_encoder and self.text_model is not None:
            self.text_model.eval()
        if self.config.freeze_vision_encoder and self.vision_model is not None:
            self.vision_model.eval()
        return self

    def get_input_embeddings(self) -> nn.Module:
        """The text tower's word embeddings (what `resize_token_embeddings` resizes after tokens are added); None
        for the image-only baseline, which has no text tower."""
        return self.text_model.get_input_embeddings() if self.text_model is not None else None

    def set_input_embeddings(self, value: nn.Module) -> None:
        if self.text_model is None:
            raise ValueError("The image-only baseline (fusion='image') has no text tower.")
        self.text_model.set_input_embeddings(value)

    @can_return_tuple
    def get_image_features(
        self, pixel_values: torch.FloatTensor, output_hidden_states: bool | list[int] | None = None, **kwargs
    ) -> BaseModelOutputWithPooling | tuple:
        """Run the vision tower: a `BaseModelOutputWithPooling` like transformers' image+text models return.

        `last_hidden_state` is the tower's last hidden state, (B, C, H, W) for CNNs and (B, N, C) for ViT-like towers:
        exactly what `image_features=` accepts, so the features of a frozen tower can be computed once and reused.
        `pooler_output` is its global average (B, C), what concat fusion reads. `hidden_states` (the tower's, per
        stage or layer) when `output_hidden_states` is set, here or in the config.
        """
        if self.vision_model is None:
            raise ValueError("The text-only baseline (fusion='text') has no vision tower.")
        output_hidden_states = _output_flag(output_hidden_states, self.config, "output_hidden_states", "vision_config")
        needs_grad = torch.is_grad_enabled() and not self.config.freeze_vision_encoder
        with torch.set_grad_enabled(needs_grad):
            outputs = self.vision_model(
                pixel_values=pixel_values, output_hidden_states=output_hidden_states, return_dict=True
            )
        features = outputs.last_hidden_state
        return BaseModelOutputWithPooling(
            last_hidden_state=features,
            pooler_output=pool_image_features(features),
            hidden_states=getattr(outputs, "hidden_states", None),
            attentions=getattr(outputs, "attentions", None),
        )

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        image_features: torch.FloatTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | list[int] | None = None,
        **kwargs,
    ) -> MMFusionModelOutput | tuple:
        r"""
        image_features (`torch.FloatTensor`, *optional*):
            Precomputed `get_image_features(pixel_values).last_hidden_state`, instead of `pixel_values`.
        inputs_embeds (`torch.FloatTensor` of shape `(batch_size, sequence_length, hidden_size)`, *optional*):
            The caption's word embeddings instead of `input_ids`.
        output_hidden_states (`bool` or `list[int]`, *optional*):
            Return the text encoder's hidden states; a list of indices returns only those (the others are `None`).
            Defaults to the config's flag (or the text sub-config's).
        """
        fusion_type = FUSIONS[self.config.fusion]
        # The unimodal baselines ignore (and do not need) the other modality's inputs.
        if fusion_type.needs_text and (input_ids is None) == (inputs_embeds is None):
            raise ValueError(
                "Pass exactly one of `input_ids` and `inputs_embeds` (use the processor on the caption, even an "
                "empty one)."
            )
        if fusion_type.needs_image and (pixel_values is None) == (image_features is None):
            raise ValueError("Pass exactly one of `pixel_values` and `image_features` (precomputed features).")
        output_attentions = _output_flag(output_attentions, self.config, "output_attentions", "text_config")
        output_hidden_states = _output_flag(output_hidden_states, self.config, "output_hidden_states", "text_config")
        if not fusion_type.needs_text:
            input_ids = inputs_embeds = attention_mask = token_type_ids = None
        elif attention_mask is None:
            text = input_ids if input_ids is not None else inputs_embeds[..., 0]
            attention_mask = torch.ones(text.shape[:2], dtype=torch.long, device=text.device)
        if not fusion_type.needs_image:
            image_features = None
        elif image_features is None:
            image_features = self.get_image_features(
                pixel_values, output_hidden_states=False, return_dict=True
            ).last_hidden_state
        elif not isinstance(image_features, torch.Tensor):
            raise TypeError(
                "image_features must be a tensor: pass `get_image_features(pixel_values).last_hidden_state`, not "
                f"the {type(image_features).__name__} itself."
            )
        bimodal = fusion_type.needs_text and fusion_type.needs_image
        if self.training and self.config.modality_dropout > 0 and bimodal:
            image_features, attention_mask = self._drop_modalities(image_features, attention_mask)

        fusion_input = image_features
        if FUSIONS[self.config.fusion].uses_image_tokens:
            fusion_input = image_tokens_from_features(image_features, self.config.num_image_tokens)
        text_inputs = {
            "input_ids": input_ids,
            "inputs_embeds": inputs_embeds,
            "attention_mask": attention_mask,
            "token_type_ids": token_type_ids,
        }
        return self.fusion(
            self.text_model,
            text_inputs,
            fusion_input,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )

    def _drop_modalities(self, image_features, attention_mask):
        """Per example, with probability `modality_dropout`, blank the image features or cut the caption to [CLS]."""
        batch_size = attention_mask.shape[0]
        dropped = torch.rand(batch_size, device=attention_mask.device) < self.config.modality_dropout
        drop_image = dropped & (torch.rand(batch_size, device=attention_mask.device) < 0.5)
        drop_text = dropped & ~drop_image
        keep_image = (~drop_image).to(image_features.dtype).view(batch_size, *([1] * (image_features.dim() - 1)))
        attention_mask = attention_mask.clone()
        attention_mask[drop_text, 1:] = 0
        return image_features * keep_image, attention_mask


class MMFusionForClassification(MMFusionPreTrainedModel):
    """An mmfusion model with a linear classifier on the fused representation.

    Single-label classification (cross-entropy, any `num_labels` >= 2), multi-label (BCE) or regression
    (`num_labels=1`, MSE), chosen like transformers' `*ForSequenceClassification` via `config.problem_type`.
    """

    def __init__(self, config: MMFusionConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.mmfusion = MMFusionModel(config)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(self.mmfusion.output_size, config.num_labels)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.mmfusion.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.mmfusion.set_input_embeddings(value)

    def get_image_features(self, pixel_values: torch.FloatTensor, **kwargs) -> BaseModelOutputWithPooling | tuple:
        """See `MMFusionModel.get_image_features`."""
        return self.mmfusion.get_image_features(pixel_values, **kwargs)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        image_features: torch.FloatTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | list[int] | None = None,
        **kwargs,
    ) -> MMFusionClassifierOutput | tuple:
        outputs = self.mmfusion(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            pixel_values=pixel_values,
            image_features=image_features,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        logits = self.classifier(self.dropout(outputs.pooler_output))
        loss = self.compute_loss(logits, labels) if labels is not None else None
        return MMFusionClassifierOutput(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            fusion_attentions=outputs.fusion_attentions,
        )

    def compute_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        labels = labels.to(logits.device)
        if self.config.problem_type is None:
            if self.num_labels == 1:
                self.config.problem_type = "regression"
            elif labels.dtype in (torch.long, torch.int):
                self.config.problem_type = "single_label_classification"
            else:
                self.config.problem_type = "multi_label_classification"
        if self.config.problem_type == "regression":
            return F.mse_loss(logits.squeeze(-1), labels.squeeze(-1).to(logits.dtype))
        if self.config.problem_type == "single_label_classification":
            return F.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


MMFusionModel.register_for_auto_class("AutoModel")
MMFusionForClassification.register_for_auto_class("AutoModelForSequenceClassification")

__all__ = [
    "MMFusionPreTrainedModel",
    "MMFusionModel",
    "MMFusionForClassification",
    "MMFusionModelOutput",
    "MMFusionClassifierOutput",
    "FUSION_MODULES",
    "image_tokens_from_features",
    "pool_image_features",
    "pool_text",
    "sentence_transformers_pooling",
]
