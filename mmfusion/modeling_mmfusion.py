"""mmfusion models: a text tower and a vision tower joined by one of the fusions in the registry (`FUSIONS`).

Copied next to every checkpoint (remote code): it imports only torch, transformers and its flat siblings.

Early fusion layout (deliberate): `[CLS] caption [SEP] <pad>... img_1 ... img_N`. The caption keeps the positions
the text tower was pretrained with, so [CLS] stays at position 0 and the classifier reads the token (and the pooler)
the tower was trained to summarise with; [CLS] attends to every image token. The notebook put the image tokens first
and still read position 0, which is then the first image token's output rather than [CLS]. Padding sits between the
caption and the image tokens; it is masked out, and image tokens carry their own position embeddings, so where they
sit in the sequence does not matter.
"""

from __future__ import annotations

import inspect
import json
import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import transformers
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_outputs import BaseModelOutputWithPooling, SequenceClassifierOutput
from transformers.utils import ModelOutput, cached_file
from transformers.utils.generic import can_return_tuple

from .configuration_mmfusion import DUAL_ENCODER_TOWERS, FUSIONS, MMFusionConfig
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
    attention_mask: torch.Tensor | None,
    pooler_output: torch.Tensor | None = None,
    pooling: str = "pooler",
) -> torch.Tensor:
    """The caption as one vector, before any projection (`config.text_pooling`): every fusion that reads one text
    vector gets it here (through `MMFusionModel.text_embeddings`, or early fusion over its caption positions).

    `last_hidden_state` starts with the caption's tokens, `attention_mask` marks the real ones (None: all).
    "pooler": `pooler_output` when the tower gave one (BERT's pooler over [CLS]; CLIP's [EOS] state after the final
    LayerNorm; SigLIP's head over the last token), else the tower's pooler on the states, else the first token;
    "cls": the first token's state; "mean": the mean over the real tokens (sentence-transformers' pooling).
    """
    if pooling == "mean":
        if attention_mask is None:
            return last_hidden_state.mean(dim=1)
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


# Early fusion's image gate: where it starts (about 1/1000 of a caption token's attention weight per image token) and
# the floor below which it counts as closed.
EARLY_IMAGE_GATE_INIT = 1e-3
EARLY_IMAGE_GATE_MIN = 1e-6


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
        # `image_gate`: how much attention every position pays to the image tokens, as a factor on their softmax
        # weights (see `gated_attention_mask`). It starts near 0 (`_init_weights`), so the caption is first encoded
        # as by the text tower alone; the image gets in only as far as training opens the gate.
        self.image_gate = nn.Parameter(torch.full((1,), EARLY_IMAGE_GATE_INIT)) if config.image_gate else None

    def embed_image(self, image_tokens: torch.Tensor) -> torch.Tensor:
        embeddings = (
            self.image_projection(image_tokens)
            + self.image_position_embeddings.weight
            + self.modality_embeddings.weight[IMAGE]
        )
        return self.dropout(self.image_layer_norm(embeddings))

    def gated_attention_mask(self, mask: torch.Tensor | None, joint: torch.Tensor, first_image_position: int):
        """The encoder's additive attention mask plus log(gate) on the image tokens' columns.

        Adding log(g) to a key's attention logit multiplies its softmax weight by g: with g near 0 the caption's
        states are the text tower's own (a zero image embedding would not do: its key is the projection bias, and
        49 of them still draw attention away from the caption), and the gradient with respect to g itself stays of
        order one, so training can open the gate. Needs an additive mask: the tower's eager or sdpa attention.
        """
        if self.image_gate is None:
            return mask
        log_gate = torch.log(self.image_gate.clamp(min=EARLY_IMAGE_GATE_MIN)).to(joint.dtype)
        bias = joint.new_zeros(joint.shape[0], 1, 1, joint.shape[1])
        bias[..., first_image_position:] = log_gate
        if mask is None:
            return bias
        if mask.dtype == torch.bool:  # sdpa's boolean mask: True = attend
            return torch.where(mask, bias, torch.finfo(joint.dtype).min)
        return mask + bias

    def forward(self, text_model, text_inputs, image_tokens, output_hidden_states=False, output_attentions=False):
        input_ids, inputs_embeds = text_inputs.get("input_ids"), text_inputs.get("inputs_embeds")
        token_type_ids, attention_mask = text_inputs.get("token_type_ids"), text_inputs["attention_mask"]
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
        if self.image_gate is not None:
            joint_mask = self.gated_attention_mask(joint_mask, joint, first_image_position=attention_mask.shape[1])
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
    """Late fusion: the image embedding concatenated with the text embedding (the notebook's Part 1).

    Like every fusion that reads embeddings (`FusionType.reads_embeddings`) it takes one text vector and one image
    vector, `MMFusionModel.text_embeddings` / `image_embeddings`: projected for a dual encoder (CLIP), else the
    towers' pooled outputs (BERT's pooler, a CNN's global average).
    """

    encodes_image_tokens = False
    uses_text_pooler = True

    def __init__(self, config: MMFusionConfig):
        super().__init__()
        self.output_size = config.image_embed_dim + config.text_embed_dim
        # `image_gate`: the image embedding scaled by tanh(g), g starting at 0, so the classifier starts from the
        # text embedding alone and the image gets in only as far as training opens the gate.
        self.image_gate = nn.Parameter(torch.zeros(1)) if config.image_gate else None

    def forward(self, text_embeds: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        image_embeds = image_embeds.to(text_embeds.dtype)
        if self.image_gate is not None:
            image_embeds = image_embeds * torch.tanh(self.image_gate)
        return torch.cat([image_embeds, text_embeds], dim=-1)


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


class MMFusionInteractionFusion(nn.Module):
    """Hate-CLIPper's interaction fusions (Kumar & Nandakumar 2022, github.com/gokulkarthik/hateclipper): trainable
    linear maps of the text and image embeddings to `fusion_map_dim`, dropout, L2 normalisation, an interaction of
    the two (`interact`), dropout, then `fusion_num_pre_output_layers` x (linear to `fusion_map_dim`, ReLU, dropout);
    the classifier (with its `classifier_dropout`) follows in `MMFusionForClassification`."""

    encodes_image_tokens = False
    uses_text_pooler = True

    def __init__(self, config: MMFusionConfig):
        super().__init__()
        map_dim = config.fusion_map_dim
        self.text_map = nn.Sequential(nn.Linear(config.text_embed_dim, map_dim), nn.Dropout(config.fusion_map_dropout))
        self.image_map = nn.Sequential(
            nn.Linear(config.image_embed_dim, map_dim), nn.Dropout(config.fusion_map_dropout)
        )
        width = self.interaction_size(map_dim)
        layers: list[nn.Module] = [nn.Dropout(config.fusion_pre_output_dropout)]
        for index in range(config.fusion_num_pre_output_layers):
            if index:  # the last layer's dropout is the classifier's
                layers.append(nn.Dropout(config.classifier_dropout))
            layers += [nn.Linear(width, map_dim), nn.ReLU()]
            width = map_dim
        self.pre_output = nn.Sequential(*layers)
        self.output_size = width

    @staticmethod
    def interaction_size(map_dim: int) -> int:
        raise NotImplementedError

    @staticmethod
    def interact(image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, text_embeds: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        text = F.normalize(self.text_map(text_embeds), dim=-1)
        image = F.normalize(self.image_map(image_embeds.to(text.dtype)), dim=-1)
        return self.pre_output(self.interact(image, text))


class MMFusionCrossFusion(MMFusionInteractionFusion):
    """Hate-CLIPper's cross fusion: the outer product of the mapped image and text embeddings (the "feature
    interaction matrix", `fusion_map_dim**2` entries), flattened."""

    @staticmethod
    def interaction_size(map_dim: int) -> int:
        return map_dim * map_dim

    @staticmethod
    def interact(image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        # (B, D, 1) * (B, 1, D): Hate-CLIPper's bmm(image.unsqueeze(2), text.unsqueeze(1)), image rows
        return (image.unsqueeze(2) * text.unsqueeze(1)).flatten(1)


class MMFusionAlignFusion(MMFusionInteractionFusion):
    """Hate-CLIPper's align fusion: the element-wise product of the mapped image and text embeddings (the diagonal
    of cross fusion's interaction matrix)."""

    @staticmethod
    def interaction_size(map_dim: int) -> int:
        return map_dim

    @staticmethod
    def interact(image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return image * text


class MMFusionLateFusion(nn.Module):
    """MMF's score-level late fusion (`LateFusion`): a text head and an image head, logits averaged.

    Each head is an MLP (linear to `fusion_hidden_size`, ReLU, dropout, then a linear output layer). The two output
    layers live in the classifier of `MMFusionForClassification`, which reads `[h_text; h_image]`: a linear layer on
    a concatenation is exactly the average of two per-modality linear layers, `W [h_t; h_i] + b =
    ((2 W_t h_t + b) + (2 W_i h_i + b)) / 2`, so the logits are the average of the two heads' scores (and the
    modules keep the base-model / classifier split every fusion has). No interaction between the modalities.
    """

    encodes_image_tokens = False
    uses_text_pooler = True

    def __init__(self, config: MMFusionConfig):
        super().__init__()
        width = config.fusion_hidden_size
        self.text_head = nn.Sequential(
            nn.Linear(config.text_embed_dim, width), nn.ReLU(), nn.Dropout(config.classifier_dropout)
        )
        self.image_head = nn.Sequential(
            nn.Linear(config.image_embed_dim, width), nn.ReLU(), nn.Dropout(config.classifier_dropout)
        )
        self.output_size = 2 * width

    def forward(self, text_embeds: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.text_head(text_embeds), self.image_head(image_embeds.to(text_embeds.dtype))], dim=-1)


class MMFusionTextOnly(nn.Module):
    """Unimodal text baseline (the Hateful Memes paper's Text BERT, MMF's `unimodal_text`): the classifier reads the
    text embedding alone (`MMFusionModel.text_embeddings`, pooled with `text_pooling`); no vision tower is built."""

    encodes_image_tokens = False
    uses_text_pooler = True

    def __init__(self, config: MMFusionConfig):
        super().__init__()
        self.output_size = config.text_embed_dim

    def forward(self, text_embeds: torch.Tensor, image_embeds: None = None) -> torch.Tensor:
        return text_embeds


class MMFusionImageOnly(nn.Module):
    """Unimodal image baseline (the paper's Image-Grid, MMF's `unimodal_image`): the classifier reads the image
    embedding alone (`MMFusionModel.image_embeddings`); no text tower is built."""

    encodes_image_tokens = False
    uses_text_pooler = False

    def __init__(self, config: MMFusionConfig):
        super().__init__()
        self.output_size = config.image_embed_dim

    def forward(self, text_embeds: None, image_embeds: torch.Tensor) -> torch.Tensor:
        return image_embeds


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
        if isinstance(module, MMFusionEarlyFusion) and module.image_gate is not None:
            init.constant_(module.image_gate, EARLY_IMAGE_GATE_INIT)
        elif isinstance(module, (MMFusionAttentionFusion, MMFusionConcatFusion)) and module.image_gate is not None:
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

        Each path is a transformers text or vision model (`"bert-base-uncased"`, `"microsoft/resnet-50"`, a local
        folder), or a dual encoder (CLIP, SigLIP: `"openai/clip-vit-large-patch14"`,
        `"google/siglip-base-patch16-224"`) from which the text path takes the text tower and the vision path the
        vision tower; the same dual encoder for both gives both towers with their projections into the joint
        embedding space (CLIP's `text_projection`/`visual_projection`, `projection_dim`), loaded once.
        `vision_model_name_or_path` may also be `"torchvision/<arch>"` for torchvision's ResNets
        (resnet18/34/50/101/152): torchvision's default ImageNet weights, or the state dict file given as
        `torchvision_weights`, converted to the equivalent transformers ResNet. Remaining keyword arguments go to
        `MMFusionConfig` (`fusion`, `num_labels`, `id2label`, ...); `image_size` defaults to a dual encoder's,
        `image_gate` to True (the fresh fusion layers start from what the pretrained text tower knows) and
        `text_pooling` to the pooling a sentence-transformers checkpoint was trained with.

        Example:
        ```python
        model = MMFusionForClassification.from_text_vision_pretrained(
            "bert-base-uncased", "microsoft/resnet-50", fusion="early", num_labels=2
        )
        model = MMFusionForClassification.from_text_vision_pretrained(
            "openai/clip-vit-large-patch14", "openai/clip-vit-large-patch14", fusion="cross", num_labels=2,
            freeze_text_encoder=True, freeze_vision_encoder=True,
        )
        ```
        """
        loaded = {}  # path -> (config, state dict), so one dual encoder is read once for both towers

        def load(path, kwargs):
            if path not in loaded:
                source = AutoModel.from_pretrained(path, **kwargs)
                loaded[path] = (source.config, source.state_dict())
            return loaded[path]

        def tower(path, kwargs, role):
            """(tower config, tower state dict, projection weight or None) from a tower or a dual encoder."""
            config, state = load(path, kwargs)
            sub_config = getattr(config, f"{role}_config", None)
            if sub_config is None or config.model_type == MMFusionConfig.model_type:
                return config, state, None
            # The dual encoder's `text_model.*` / `vision_model.*`: the tower's own keys, with the prefix or without
            # it depending on how the tower class nests its transformer (it changed across transformers versions).
            prefix = f"{role}_model."
            tower_keys = _tower_from_config(sub_config).state_dict().keys()
            tower_state = {
                (key if key in tower_keys else key[len(prefix) :]): value
                for key, value in state.items()
                if key.startswith(prefix)
            }
            projection = state.get("text_projection.weight" if role == "text" else "visual_projection.weight")
            return sub_config, tower_state, projection

        text_config, text_state, text_projection = tower(text_model_name_or_path, text_kwargs or {}, "text")
        architecture = torchvision_architecture(vision_model_name_or_path)
        if architecture:
            vision_model = load_torchvision_resnet(architecture, weights_path=torchvision_weights)
            vision_config, vision_state, visual_projection = vision_model.config, vision_model.state_dict(), None
        else:
            vision_config, vision_state, visual_projection = tower(
                vision_model_name_or_path, vision_kwargs or {}, "vision"
            )
        if text_projection is not None and visual_projection is not None:
            config_kwargs.setdefault("projection_dim", text_projection.shape[0])
        if vision_config.model_type in DUAL_ENCODER_TOWERS:
            config_kwargs.setdefault("image_size", vision_config.image_size)  # its position embeddings' size
        # Fresh fusion layers must not spoil what the pretrained text tower knows: the image starts gated off.
        config_kwargs.setdefault("image_gate", True)
        if "text_pooling" not in config_kwargs:
            config_kwargs["text_pooling"] = sentence_transformers_pooling(text_model_name_or_path) or "pooler"
        config = MMFusionConfig(text_config=text_config, vision_config=vision_config, **config_kwargs)
        model = cls(config)
        towers = model.base_model if model.base_model is not model else model
        if config.projection_dim and (text_projection is None or visual_projection is None):
            raise ValueError("projection_dim needs both towers from one dual encoder with projections (CLIP).")
        # A unimodal baseline has one tower (and one projection): the other checkpoint's weights are not needed.
        if towers.text_model is not None:
            towers.text_model.load_state_dict(_matching_state(text_state, towers.text_model), strict=True)
            if towers.text_projection is not None:
                towers.text_projection.weight.data.copy_(text_projection)
        if towers.vision_model is not None:
            towers.vision_model.load_state_dict(vision_state, strict=True)
            if towers.visual_projection is not None:
                towers.visual_projection.weight.data.copy_(visual_projection)
        return model


def sentence_transformers_pooling(name_or_path: str) -> str | None:
    """The `text_pooling` a sentence-transformers checkpoint was trained with (its `modules.json` and pooling
    module's `config.json`), or None for other checkpoints. Local folders and Hub repos (cache or download)."""

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
    if sub_config.model_type in _TOWERS_AUTO_MODEL_LACKS:
        return getattr(transformers, _TOWERS_AUTO_MODEL_LACKS[sub_config.model_type])(sub_config)
    try:
        return AutoModel.from_config(sub_config)
    except ValueError as error:
        if "attention implementation" not in str(error):
            raise
        return AutoModel.from_config(sub_config, attn_implementation="eager")


# Text towers whose pooled output is the last position, trained on captions padded to the full length (SigLIP).
_FULL_LENGTH_TEXT_TOWERS = {"siglip_text_model", "siglip2_text_model"}
# Tower configs that transformers' AutoModel does not map to a model class (SigLIP's text towers).
_TOWERS_AUTO_MODEL_LACKS = {"siglip_text_model": "SiglipTextModel", "siglip2_text_model": "Siglip2TextModel"}


def _matching_state(source: dict, target: nn.Module) -> dict:
    """The source tower's weights that the target tower has (attention fusion drops the unused text pooler)."""
    wanted = target.state_dict().keys()
    return {key: value for key, value in source.items() if key in wanted}


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
        # A dual encoder's projections into its joint embedding space (CLIP's `text_projection` /
        # `visual_projection`); they belong to their towers and are frozen with them.
        self.text_projection = self.visual_projection = None
        if config.projection_dim and self.text_model is not None:
            self.text_projection = nn.Linear(config.text_config.hidden_size, config.projection_dim, bias=False)
        if config.projection_dim and self.vision_model is not None:
            self.visual_projection = nn.Linear(config.vision_feature_size, config.projection_dim, bias=False)
        # The text inputs the tower's forward names (CLIP's and SigLIP's take neither token types nor embeddings).
        text_parameters = inspect.signature(self.text_model.forward).parameters if self.text_model is not None else {}
        self._text_input_names = {"input_ids", "attention_mask"} | (
            {"token_type_ids", "inputs_embeds"} & set(text_parameters)
        )
        self.fusion = fusion_class(config)
        self.post_init()
        for modules, frozen in (
            ((self.text_model, self.text_projection), config.freeze_text_encoder),
            ((self.vision_model, self.visual_projection), config.freeze_vision_encoder),
        ):
            for module in modules:
                if frozen and module is not None:
                    module.requires_grad_(False)

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
        `pooler_output` is its global average (B, C), or for a dual encoder's tower (CLIP, SigLIP) the tower's own
        pooled output; `image_embeddings` projects it. `hidden_states` (the tower's, per
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
            pooler_output=self._pooled_image_output(features, outputs),
            hidden_states=getattr(outputs, "hidden_states", None),
            attentions=getattr(outputs, "attentions", None),
        )

    def _pooled_image_output(self, features: torch.Tensor, outputs=None) -> torch.Tensor:
        """One vector per image before any projection: a dual encoder tower's pooled output, else the average."""
        if self.config.vision_config.model_type in DUAL_ENCODER_TOWERS:
            if outputs is None:
                raise ValueError(
                    f"The {self.config.vision_config.model_type} tower's pooled output is its own head, not an "
                    "average of `image_features`: pass `pixel_values` or precomputed `image_embeds`."
                )
            return outputs.pooler_output
        return pool_image_features(features)

    def image_embeddings(
        self, pixel_values: torch.FloatTensor | None = None, image_features: torch.FloatTensor | None = None
    ) -> torch.Tensor:
        """One vector per image, (B, image_embed_dim): the tower's pooled output projected into the joint space
        (`visual_projection`) when the model has one, else the pooled output itself. What `image_embeds=` takes,
        so that with a frozen vision tower it can be computed once."""
        if (pixel_values is None) == (image_features is None):
            raise ValueError("Pass exactly one of `pixel_values` and `image_features`.")
        if pixel_values is not None:
            pooled = self.get_image_features(pixel_values, output_hidden_states=False, return_dict=True).pooler_output
        else:
            pooled = self._pooled_image_output(image_features)
        if self.visual_projection is None:
            return pooled
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_vision_encoder):
            return self.visual_projection(pooled)

    def _text_inputs(self, input_ids, attention_mask, token_type_ids, inputs_embeds, pooled: bool = False) -> dict:
        """The text tower's keyword arguments: those it takes (token types are dropped for towers without them).

        `pooled`: for the caption's pooled embedding only (not its token states)."""
        if inputs_embeds is not None and "inputs_embeds" not in self._text_input_names:
            raise ValueError(f"The {self.config.text_config.model_type} text tower does not take `inputs_embeds`.")
        if attention_mask is None:
            text = input_ids if input_ids is not None else inputs_embeds[..., 0]
            attention_mask = torch.ones(text.shape[:2], dtype=torch.long, device=text.device)
        text_config = self.config.text_config
        if pooled and text_config.model_type in _FULL_LENGTH_TEXT_TOWERS and input_ids is not None:
            # SigLIP's text tower reads its last position and was trained on captions padded to its full length
            # without a mask: pad (and re-pad) so that a caption's embedding does not depend on its batch.
            pad_id = text_config.pad_token_id if text_config.pad_token_id is not None else 0
            input_ids = torch.where(attention_mask.bool(), input_ids, pad_id)
            input_ids = F.pad(input_ids, (0, text_config.max_position_embeddings - input_ids.shape[1]), value=pad_id)
            attention_mask = None
        given = {
            "input_ids": input_ids,
            "inputs_embeds": inputs_embeds,
            "attention_mask": attention_mask,
            "token_type_ids": token_type_ids,
        }
        return {name: value for name, value in given.items() if value is not None and name in self._text_input_names}

    def _encode_text(self, text_inputs: dict, output_hidden_states=False, output_attentions=False):
        """(text embeddings, the tower's outputs); see `text_embeddings`."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_text_encoder):
            outputs = self.text_model(
                **text_inputs,
                output_hidden_states=output_hidden_states,
                output_attentions=output_attentions,
                return_dict=True,
            )
            embeds = pool_text(
                self.text_model,
                outputs.last_hidden_state,
                text_inputs.get("attention_mask"),
                getattr(outputs, "pooler_output", None),
                self.config.text_pooling,
            )
            if self.text_projection is not None:
                embeds = self.text_projection(embeds)
        return embeds, outputs

    def text_embeddings(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
    ) -> torch.Tensor:
        """One vector per caption, (B, text_embed_dim): the caption pooled by `text_pooling` (`pool_text`), projected
        into the joint space (`text_projection`) when the model has one, else the pooled output itself. What
        `text_embeds=` takes, so that with a frozen text tower it can be computed once."""
        text_inputs = self._text_inputs(input_ids, attention_mask, token_type_ids, inputs_embeds, pooled=True)
        return self._encode_text(text_inputs)[0]

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
        text_embeds: torch.FloatTensor | None = None,
        image_embeds: torch.FloatTensor | None = None,
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
        text_embeds (`torch.FloatTensor` of shape `(batch_size, text_embed_dim)`, *optional*):
            Precomputed `text_embeddings(...)`, instead of the caption, for the fusions that read embeddings
            (`concat`, `cross`, `align`, `late`): what a frozen text tower's cache holds.
        image_embeds (`torch.FloatTensor` of shape `(batch_size, image_embed_dim)`, *optional*):
            Precomputed `image_embeddings(...)`, instead of the image, for the same fusions.
        """
        fusion_type = FUSIONS[self.config.fusion]
        reads_embeddings = fusion_type.reads_embeddings
        if (text_embeds is not None or image_embeds is not None) and not reads_embeddings:
            raise ValueError(
                f"fusion={self.config.fusion!r} reads the towers' token states: `text_embeds`/`image_embeds` only "
                "serve the fusions that read embeddings."
            )
        # The unimodal baselines do not need (and ignore) the other modality's inputs.
        if fusion_type.needs_text and sum(value is not None for value in (input_ids, inputs_embeds, text_embeds)) != 1:
            raise ValueError(
                "Pass exactly one of `input_ids` and `inputs_embeds` (use the processor on the caption, even an "
                "empty one), or precomputed `text_embeds`."
            )
        if fusion_type.needs_image and sum(v is not None for v in (pixel_values, image_features, image_embeds)) != 1:
            raise ValueError(
                "Pass exactly one of `pixel_values` and `image_features` (precomputed features), or precomputed "
                "`image_embeds`."
            )
        output_attentions = _output_flag(output_attentions, self.config, "output_attentions", "text_config")
        output_hidden_states = _output_flag(output_hidden_states, self.config, "output_hidden_states", "text_config")
        if reads_embeddings:
            return self._fuse_embeddings(
                input_ids,
                attention_mask,
                token_type_ids,
                pixel_values,
                image_features,
                inputs_embeds,
                text_embeds,
                image_embeds,
                output_hidden_states=output_hidden_states,
                output_attentions=output_attentions,
            )
        if attention_mask is None:
            text = input_ids if input_ids is not None else inputs_embeds[..., 0]
            attention_mask = torch.ones(text.shape[:2], dtype=torch.long, device=text.device)
        if image_features is None:
            image_features = self.get_image_features(
                pixel_values, output_hidden_states=False, return_dict=True
            ).last_hidden_state
        elif not isinstance(image_features, torch.Tensor):
            raise TypeError(
                "image_features must be a tensor: pass `get_image_features(pixel_values).last_hidden_state`, not "
                f"the {type(image_features).__name__} itself."
            )
        if self.training and self.config.modality_dropout > 0:
            image_features, attention_mask = self._drop_modalities(image_features, attention_mask)

        fusion_input = image_features
        if fusion_type.uses_image_tokens:
            fusion_input = image_tokens_from_features(image_features, self.config.num_image_tokens)
        text_inputs = self._text_inputs(input_ids, attention_mask, token_type_ids, inputs_embeds)
        return self.fusion(
            self.text_model,
            text_inputs,
            fusion_input,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )

    def _fuse_embeddings(
        self,
        input_ids,
        attention_mask,
        token_type_ids,
        pixel_values,
        image_features,
        inputs_embeds,
        text_embeds,
        image_embeds,
        output_hidden_states=False,
        output_attentions=False,
    ) -> MMFusionModelOutput:
        """The fusions that read one text vector and one image vector, computed here unless given precomputed."""
        fusion_type = FUSIONS[self.config.fusion]
        text_outputs = None
        if not fusion_type.needs_text:
            text_embeds = None
        elif text_embeds is None:
            text_inputs = self._text_inputs(input_ids, attention_mask, token_type_ids, inputs_embeds, pooled=True)
            text_embeds, text_outputs = self._encode_text(text_inputs, output_hidden_states, output_attentions)
        if not fusion_type.needs_image:
            image_embeds = None
        elif image_embeds is None:
            image_embeds = self.image_embeddings(pixel_values=pixel_values, image_features=image_features)
        if self.training and self.config.modality_dropout > 0 and fusion_type.needs_text and fusion_type.needs_image:
            # per example, with probability `modality_dropout`, one of the two embeddings is zeroed
            batch_size = text_embeds.shape[0]
            dropped = torch.rand(batch_size, device=text_embeds.device) < self.config.modality_dropout
            drop_image = dropped & (torch.rand(batch_size, device=text_embeds.device) < 0.5)
            text_embeds = text_embeds * (~(dropped & ~drop_image)).to(text_embeds.dtype).unsqueeze(-1)
            image_embeds = image_embeds * (~drop_image).to(image_embeds.dtype).unsqueeze(-1)
        hidden_states = getattr(text_outputs, "hidden_states", None)
        return MMFusionModelOutput(
            pooler_output=self.fusion(text_embeds, image_embeds),
            hidden_states=hidden_states,
            attentions=getattr(text_outputs, "attentions", None),
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

    def text_embeddings(self, *args, **kwargs) -> torch.Tensor:
        """See `MMFusionModel.text_embeddings`."""
        return self.mmfusion.text_embeddings(*args, **kwargs)

    def image_embeddings(self, *args, **kwargs) -> torch.Tensor:
        """See `MMFusionModel.image_embeddings`."""
        return self.mmfusion.image_embeddings(*args, **kwargs)

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
        text_embeds: torch.FloatTensor | None = None,
        image_embeds: torch.FloatTensor | None = None,
        **kwargs,
    ) -> MMFusionClassifierOutput | tuple:
        r"""
        text_embeds, image_embeds (`torch.FloatTensor`, *optional*):
            Precomputed `text_embeddings(...)` / `image_embeddings(...)` (see `MMFusionModel.forward`).
        """
        outputs = self.mmfusion(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            pixel_values=pixel_values,
            image_features=image_features,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            text_embeds=text_embeds,
            image_embeds=image_embeds,
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
