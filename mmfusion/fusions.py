"""The fusion contract and the fusions: how a text tower and a vision tower become one representation.

Copied next to every checkpoint (remote code): it imports only torch, transformers and its flat siblings.

A fusion is one `Fusion` subclass with a `name`. Defining the class registers it in `FUSIONS`; everything that
lists fusions (the config's defaults and validation, `train.py --fusion` and its flags, the model card, the export,
the conformance tests, the README's table) reads that registry. The class owns its settings (`settings`: each one's
default and help, stored in `MMFusionConfig` and offered as a `train.py` flag), their validation (`validate`) and its
weight initialisation (`init_weights`). `MMFusionModel.forward` calls every fusion the same way, `fusion(inputs)`
with one `FusionInputs`, which computes on demand what the fusion asks for (token states, image tokens, one
embedding per modality) from what the caller passed, and applies modality dropout in one place.

Two bases cover the fusions so far: `EmbeddingFusion` (one text vector and one image vector, `fuse(text, image)`;
cacheable with frozen towers) and `TokenFusion` (the caption's tokens and the image's grid tokens).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from transformers.masking_utils import create_bidirectional_mask
from transformers.utils import ModelOutput

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
    retrieval_embeds (`torch.FloatTensor`, *optional*):
        The vector retrieval compares, where it is not `pooler_output`: for the fusions whose pooled output ends in
        a ReLU (`Fusion.ends_in_relu`), the last layer before that ReLU, as RGCL's embedding is (`mlp[:-2]`). A ReLU's
        output has no negative entries, so two examples' cosine similarity cannot go below 0; pushing other classes
        away then shrinks the vectors towards zero instead (issue 21: under RGCL's loss align's classifier input fell
        to a norm of 0.02 from 0.54 and its head predicted the majority class).
    """

    pooler_output: torch.FloatTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    fusion_attentions: torch.FloatTensor | None = None
    retrieval_embeds: torch.FloatTensor | None = None


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


@dataclass(frozen=True)
class FusionSetting:
    """One setting a fusion reads from the config: its default (what configs saved without it mean) and its help
    (the config's docstring and the `train.py` flag). Fusions sharing a setting share one `FusionSetting`."""

    default: Any
    help: str
    type: type | None = None  # for the command-line flag; default: the default's type
    choices: tuple | None = None  # the values the command-line flag accepts (None: any of its type)

    @property
    def value_type(self) -> type:
        return self.type or type(self.default)


# Settings more than one fusion reads (a name means one thing across the registry).
IMAGE_GATE = FusionSetting(
    False,
    "Start training from the text tower's own behaviour and let the image in only as far as training opens a learned "
    "gate (each gated fusion says how). `False` (the default, and what configs saved before this option mean) lets "
    "the image in ungated; `from_text_vision_pretrained` (and so `train.py` with pretrained towers) turns it on.",
)
FUSION_HIDDEN_SIZE = FusionSetting(512, "Width of attention fusion's joint space and of late fusion's heads.")

# name -> fusion class; filled by defining `Fusion` subclasses with a `name`.
FUSIONS: dict[str, type[Fusion]] = {}


def register_fusion(fusion: type[Fusion]) -> type[Fusion]:
    """Add a fusion class to `FUSIONS` (done by `Fusion.__init_subclass__` for every class with a `name`)."""
    for name, setting in fusion.settings.items():
        for other in FUSIONS.values():
            known = other.settings.get(name)
            if known is not None and other is not fusion and known.default != setting.default:
                raise ValueError(
                    f"Fusion {fusion.name!r} declares setting {name!r} with default {setting.default!r}; fusion "
                    f"{other.name!r} already declares it with {known.default!r}. One name, one meaning: rename it."
                )
    FUSIONS[fusion.name] = fusion
    return fusion


def fusion_settings() -> dict[str, FusionSetting]:
    """Every setting of every registered fusion: what `MMFusionConfig` stores and `train.py` offers as flags."""
    merged: dict[str, FusionSetting] = {}
    for fusion in FUSIONS.values():
        for name, setting in fusion.settings.items():
            merged.setdefault(name, setting)
    return merged


def fusion_names(**capabilities) -> list[str]:
    """Registered fusion names, optionally those whose class attributes match, e.g. `fusion_names(needs_image=False)`."""
    return [
        name
        for name, fusion in FUSIONS.items()
        if all(getattr(fusion, attribute) == value for attribute, value in capabilities.items())
    ]


def fusion_table() -> str:
    """The markdown table of the registered fusions (name, what it does, origin): the README shows this table."""
    rows = ["| fusion | what it does | origin |", "|---|---|---|"]
    rows += [f"| `{name}` | {fusion.summary} | {fusion.origin} |" for name, fusion in FUSIONS.items()]
    return "\n".join(rows)


class Fusion(nn.Module):
    """The fusion contract. Subclass `EmbeddingFusion` or `TokenFusion` (or this, for a new family), give it a `name`
    and the documentation attributes, declare its `settings`, and implement `__init__(config)` (setting
    `output_size`, the width of what `forward` returns as `pooler_output`) and `forward(inputs)`.

    Capabilities the model, the caches and the checks read from the class:
    `needs_text` / `needs_image`: False builds no such tower and needs no such input (the unimodal baselines);
    `reads_embeddings`: reads one vector per modality (`MMFusionModel.text_embeddings` / `image_embeddings`), so any
    pair of towers works and frozen towers' vectors can be cached; `uses_image_tokens`: reads the feature grid pooled
    to `num_image_tokens` tokens; `needs_bert_like_text`: runs the image tokens through the text encoder;
    `encodes_image_tokens`: the text encoder's hidden states and attentions span the image tokens too;
    `uses_text_pooler`: reads the caption's pooled vector (else the tower's pooler is dropped as unused);
    `ends_in_relu`: the pooled output is a ReLU's, so retrieval reads the layer before it
    (`MMFusionModelOutput.retrieval_embeds`, returned by `EmbeddingFusion.fuse_for_retrieval`).
    `joint_encoder`: one vision-language model (`MMFusionModel.vision_language_model`) reads image and caption
    together, in one prompt; no separate text or vision tower is built.
    """

    name: ClassVar[str | None] = None
    title: ClassVar[str] = ""  # short name, e.g. in model card titles
    summary: ClassVar[str] = ""  # one line for the README's table
    origin: ClassVar[str] = ""  # where it comes from, for the README's table
    description: ClassVar[str] = ""  # one paragraph for model cards, formatted with the config's attributes
    settings: ClassVar[dict[str, FusionSetting]] = {}
    # This fusion's own defaults for shared settings, where they differ from the setting's (align: RGCL's head).
    # Used where a config is built without the value; a saved config keeps the values it stored.
    setting_defaults: ClassVar[dict[str, Any]] = {}
    needs_text: ClassVar[bool] = True
    needs_image: ClassVar[bool] = True
    reads_embeddings: ClassVar[bool] = False
    uses_image_tokens: ClassVar[bool] = False
    needs_bert_like_text: ClassVar[bool] = False
    encodes_image_tokens: ClassVar[bool] = False
    uses_text_pooler: ClassVar[bool] = True
    ends_in_relu: ClassVar[bool] = False
    joint_encoder: ClassVar[bool] = False

    output_size: int

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("name"):
            register_fusion(cls)

    @classmethod
    def default_setting(cls, name: str) -> Any:
        """The value a config of this fusion gets for setting `name` when none is given."""
        if name in cls.setting_defaults:
            return cls.setting_defaults[name]
        setting = cls.settings.get(name) or fusion_settings()[name]
        return setting.default

    @classmethod
    def validate(cls, config) -> None:
        """Refuse settings this fusion cannot work with, saying what to change (called by the config)."""

    def init_weights(self) -> None:
        """Initialise this fusion's own parameters where the default (normal linear/embedding init) is not meant;
        called by the model's `_init_weights`, with transformers' `init` functions (they skip loaded weights)."""

    def forward(self, inputs: FusionInputs) -> MMFusionModelOutput:
        raise NotImplementedError


class EmbeddingFusion(Fusion):
    """A fusion of one text vector and one image vector: implement `fuse(text_embeds, image_embeds) -> (B, output_size)`
    (the modality a unimodal baseline does not read comes as None)."""

    reads_embeddings = True

    def fuse(self, text_embeds: torch.Tensor | None, image_embeds: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def fuse_for_retrieval(
        self, text_embeds: torch.Tensor | None, image_embeds: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(`fuse`'s output, the retrieval embedding where it differs from it, else None); see
        `MMFusionModelOutput.retrieval_embeds`."""
        return self.fuse(text_embeds, image_embeds), None

    def forward(self, inputs: FusionInputs) -> MMFusionModelOutput:
        text_embeds = inputs.text_embeds() if self.needs_text else None
        image_embeds = inputs.image_embeds() if self.needs_image else None
        if image_embeds is not None and text_embeds is not None:
            image_embeds = image_embeds.to(text_embeds.dtype)
        pooled, retrieval = self.fuse_for_retrieval(text_embeds, image_embeds)
        return MMFusionModelOutput(
            pooler_output=pooled,
            hidden_states=getattr(inputs.text_outputs, "hidden_states", None),
            attentions=getattr(inputs.text_outputs, "attentions", None),
            retrieval_embeds=retrieval,
        )


class TokenFusion(Fusion):
    """A fusion of the caption's tokens (`inputs.text_model`, `inputs.text_inputs()`) and the image's grid tokens
    (`inputs.image_tokens()`, (B, num_image_tokens, C))."""

    uses_image_tokens = True


def default_attention_mask(input_ids, inputs_embeds, attention_mask):
    """The caption's attention mask, all ones when none is given (every token is real)."""
    if attention_mask is not None:
        return attention_mask
    text = input_ids if input_ids is not None else inputs_embeds[..., 0]
    return torch.ones(text.shape[:2], dtype=torch.long, device=text.device)


class FusionInputs:
    """What a fusion reads, computed on demand from what the caller passed to the model.

    The caption (`input_ids` / `inputs_embeds`, `attention_mask`, `token_type_ids`) or its precomputed
    `text_embeds`; the image (`pixel_values`) or its precomputed feature map (`image_features`) or embedding
    (`image_embeds`). A fusion asks for what it needs: `text_inputs()` and `text_model` (token fusions),
    `image_tokens()` / `image_features()`, `text_embeds()` / `image_embeds()` (embedding fusions).

    Modality dropout lives here, once for every fusion: while training with `modality_dropout`, each example loses
    one of its two modalities with that probability. A dropped caption is cut to its first token (token states) or
    its embedding zeroed; a dropped image has its features or embedding zeroed.
    """

    def __init__(
        self,
        model,
        *,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        inputs_embeds=None,
        pixel_values=None,
        image_features=None,
        text_embeds=None,
        image_embeds=None,
        output_hidden_states=False,
        output_attentions=False,
        vision_language_inputs=None,
    ):
        self.model = model
        # What a joint encoder's processor adds beside `input_ids` and `pixel_values` (Qwen2-VL's `image_grid_thw`,
        # Idefics3's `pixel_attention_mask`, ...), passed to the vision-language model as they are.
        self.vision_language_inputs = dict(vision_language_inputs or {})
        self.config = model.config
        self.input_ids, self.token_type_ids, self.inputs_embeds = input_ids, token_type_ids, inputs_embeds
        self.pixel_values, self._image_features = pixel_values, image_features
        self._text_embeds, self._image_embeds = text_embeds, image_embeds
        self.output_hidden_states, self.output_attentions = output_hidden_states, output_attentions
        self.attention_mask = attention_mask
        if input_ids is not None or inputs_embeds is not None:
            self.attention_mask = default_attention_mask(input_ids, inputs_embeds, attention_mask)
        self.text_outputs = None  # the text tower's outputs, once `text_embeds()` ran it
        self.drop_text = self.drop_image = None
        fusion = type(model.fusion)
        if model.training and self.config.modality_dropout > 0 and fusion.needs_text and fusion.needs_image:
            self.drop_text, self.drop_image = self._draw_modality_drops()

    def _draw_modality_drops(self):
        reference = next(
            value
            for value in (self.attention_mask, self._text_embeds, self._image_features, self._image_embeds)
            if value is not None
        )
        batch_size, device = reference.shape[0], reference.device
        dropped = torch.rand(batch_size, device=device) < self.config.modality_dropout
        drop_image = dropped & (torch.rand(batch_size, device=device) < 0.5)
        return dropped & ~drop_image, drop_image

    @staticmethod
    def _zero_rows(values: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        if rows is None:
            return values
        keep = (~rows).to(values.dtype).view(rows.shape[0], *([1] * (values.dim() - 1)))
        return values * keep

    @property
    def text_model(self) -> nn.Module:
        return self.model.text_model

    def text_inputs(self) -> dict:
        """The text tower's keyword arguments for the caption's token states (a dropped caption cut to its first
        token)."""
        attention_mask = self.attention_mask
        if self.drop_text is not None:
            attention_mask = attention_mask.clone()
            attention_mask[self.drop_text, 1:] = 0
        return self.model._text_inputs(self.input_ids, attention_mask, self.token_type_ids, self.inputs_embeds)

    def image_features(self) -> torch.Tensor:
        """The vision tower's feature map, (B, C, H, W) or (B, N, C) (a dropped image zeroed)."""
        if self._image_features is None:
            self._image_features = self.model.get_image_features(
                self.pixel_values, output_hidden_states=False, return_dict=True
            ).last_hidden_state
        return self._zero_rows(self._image_features, self.drop_image)

    def image_tokens(self) -> torch.Tensor:
        """The feature grid pooled to `num_image_tokens` tokens, (B, num_image_tokens, C)."""
        return image_tokens_from_features(self.image_features(), self.config.num_image_tokens)

    def text_embeds(self) -> torch.Tensor:
        """One vector per caption (`MMFusionModel.text_embeddings`), or the precomputed one (a dropped one zeroed)."""
        if self._text_embeds is None:
            text_inputs = self.model._text_inputs(
                self.input_ids, self.attention_mask, self.token_type_ids, self.inputs_embeds, pooled=True
            )
            self._text_embeds, self.text_outputs = self.model._encode_text(
                text_inputs, self.output_hidden_states, self.output_attentions
            )
        return self._zero_rows(self._text_embeds, self.drop_text)

    def image_embeds(self) -> torch.Tensor:
        """One vector per image (`MMFusionModel.image_embeddings`), or the precomputed one (a dropped one zeroed)."""
        if self._image_embeds is None:
            self._image_embeds = self.model.image_embeddings(
                pixel_values=self.pixel_values if self._image_features is None else None,
                image_features=self._image_features,
            )
        return self._zero_rows(self._image_embeds, self.drop_image)


# Early fusion's image gate: where it starts (about 1/1000 of a caption token's attention weight per image token) and
# the floor below which it counts as closed.
EARLY_IMAGE_GATE_INIT = 1e-3
EARLY_IMAGE_GATE_MIN = 1e-6


class MMFusionEarlyFusion(TokenFusion):
    """Image grid tokens projected into the text tower's embedding space and encoded with the caption (MMBT).

    Layout (deliberate): `[CLS] caption [SEP] <pad>... img_1 ... img_N`. The caption keeps the positions the text
    tower was pretrained with, so [CLS] stays at position 0 and the classifier reads the token (and the pooler) the
    tower was trained to summarise with; [CLS] attends to every image token. The notebook put the image tokens first
    and still read position 0, which is then the first image token's output rather than [CLS]. Padding sits between
    the caption and the image tokens; it is masked out, and image tokens carry their own position embeddings, so
    where they sit in the sequence does not matter.
    """

    name = "early"
    title = "early-fusion"
    summary = (
        "the vision tower's 7×7 feature grid becomes 49 tokens, projected into BERT's embedding space with image "
        "position and modality embeddings, and encoded by BERT together with the caption; [CLS] → classifier"
    )
    origin = "MMBT / the notebook's Part 2"
    description = (
        "The vision tower's feature grid is pooled to {num_image_tokens} image tokens, projected into the text "
        "tower's embedding space with their own position and modality embeddings, and encoded together with the "
        "caption's tokens by the text transformer (MMBT-style early fusion); the classifier reads the first token."
    )
    # `image_gate`: the attention every position pays to the image tokens is scaled by a learned factor that starts
    # at 1e-3 (its log added to their attention logits).
    settings = {"image_gate": IMAGE_GATE}
    needs_bert_like_text = True
    # The text encoder runs over caption and image tokens: its hidden states and attentions span both.
    encodes_image_tokens = True

    def __init__(self, config):
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
        # weights (see `gated_attention_mask`). It starts near 0 (`init_weights`), so the caption is first encoded
        # as by the text tower alone; the image gets in only as far as training opens the gate.
        self.image_gate = nn.Parameter(torch.full((1,), EARLY_IMAGE_GATE_INIT)) if config.image_gate else None

    @classmethod
    def validate(cls, config) -> None:
        max_positions = getattr(config.text_config, "max_position_embeddings", None)
        if max_positions is not None and max_positions < 2:
            raise ValueError("Early fusion needs a text tower with position embeddings for the caption.")

    def init_weights(self) -> None:
        init.zeros_(self.modality_embeddings.weight)
        if self.image_gate is not None:
            init.constant_(self.image_gate, EARLY_IMAGE_GATE_INIT)

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

    def forward(self, inputs: FusionInputs) -> MMFusionModelOutput:
        image_tokens = inputs.image_tokens()
        text_model, text_inputs = inputs.text_model, inputs.text_inputs()
        output_hidden_states, output_attentions = inputs.output_hidden_states, inputs.output_attentions
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


class MMFusionConcatFusion(EmbeddingFusion):
    """Late fusion: the image embedding concatenated with the text embedding (the notebook's Part 1).

    Like every `EmbeddingFusion` it takes one text vector and one image vector, `MMFusionModel.text_embeddings` /
    `image_embeddings`: projected for a dual encoder (CLIP), else the towers' pooled outputs (BERT's pooler, a CNN's
    global average).
    """

    name = "concat"
    title = "late-fusion (concat)"
    summary = "pooled image features ⊕ BERT's pooled output → classifier (late fusion)"
    origin = "the notebook's Part 1"
    description = (
        "Late fusion: the image embedding is concatenated with the text embedding (the towers' projected "
        "embeddings for a dual encoder such as CLIP, else their pooled outputs) and a linear classifier reads "
        "the result."
    )
    # `image_gate`: the image embedding is scaled by tanh(g), g starting at 0.
    settings = {"image_gate": IMAGE_GATE}

    def __init__(self, config):
        super().__init__()
        self.output_size = config.image_embed_dim + config.text_embed_dim
        # `image_gate`: the image embedding scaled by tanh(g), g starting at 0, so the classifier starts from the
        # text embedding alone and the image gets in only as far as training opens the gate.
        self.image_gate = nn.Parameter(torch.zeros(1)) if config.image_gate else None

    def init_weights(self) -> None:
        if self.image_gate is not None:
            init.zeros_(self.image_gate)

    def fuse(self, text_embeds: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        if self.image_gate is not None:
            image_embeds = image_embeds * torch.tanh(self.image_gate)
        return torch.cat([image_embeds, text_embeds], dim=-1)


class MMFusionAttentionFusion(TokenFusion):
    """Both modalities projected to one width and mixed by multi-head attention over the joint token set (the
    tutorial's FusionLayer), then mean-pooled over the real (unpadded) tokens."""

    name = "attention"
    title = "attention-fusion"
    summary = (
        "both modalities projected to one width, multi-head attention over the joint token set, mean-pooled → "
        "classifier"
    )
    origin = "the tutorial's `FusionLayer`"
    description = (
        "Both modalities are projected to {fusion_hidden_size} dimensions ({num_image_tokens} image tokens and "
        "the caption's tokens) and mixed by {fusion_num_heads}-head attention over the joint token set before "
        "the classifier."
    )
    # `image_gate`: the image tokens are scaled by tanh(g), g starting at 0, and the output is read from the
    # caption's tokens (which attend to the image tokens).
    settings = {
        "fusion_hidden_size": FUSION_HIDDEN_SIZE,
        "fusion_num_heads": FusionSetting(8, "Attention heads of attention fusion."),
        "image_gate": IMAGE_GATE,
    }
    uses_text_pooler = False  # reads the token states

    def __init__(self, config):
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

    @classmethod
    def validate(cls, config) -> None:
        if config.fusion_hidden_size % config.fusion_num_heads:
            raise ValueError(
                f"fusion_hidden_size ({config.fusion_hidden_size}) must be divisible by fusion_num_heads "
                f"({config.fusion_num_heads})."
            )

    def init_weights(self) -> None:
        init.zeros_(self.modality_embeddings.weight)
        if self.image_gate is not None:
            init.zeros_(self.image_gate)

    def forward(self, inputs: FusionInputs) -> MMFusionModelOutput:
        image_tokens = inputs.image_tokens()
        text_inputs = inputs.text_inputs()
        text_outputs = inputs.text_model(
            **text_inputs,
            output_hidden_states=inputs.output_hidden_states,
            output_attentions=inputs.output_attentions,
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
            need_weights=bool(inputs.output_attentions),
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


# The vision-language joint encoder (RA-HMD's stage 1): its settings, and how its prompt states become one vector.
JOINT_POOLINGS = ("last_token", "mean")
DEFAULT_PROMPT_TEMPLATE = 'This is an image with: "{caption}" written on it. Is it hateful?'


def last_token_states(states: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """The state of each row's last real token, (B, D): the last position with left padding (how joint prompts are
    padded), the last unmasked one with right padding."""
    if attention_mask is None:
        return states[:, -1]
    positions = torch.arange(attention_mask.shape[1], device=states.device)
    last = (attention_mask.to(states.device).bool() * positions).argmax(dim=-1)
    return states[torch.arange(states.shape[0], device=states.device), last]


def pool_prompt(states: torch.Tensor, attention_mask: torch.Tensor | None, pooling: str) -> torch.Tensor:
    """A prompt's last-layer states as one vector: the last prompt token's (`"last_token"`: what a causal model has
    summarised the whole prompt into, right before it would answer) or the mean over the real tokens (`"mean"`)."""
    if pooling == "last_token":
        return last_token_states(states, attention_mask)
    if attention_mask is None:
        return states.mean(dim=1)
    keep = attention_mask.to(states.device).unsqueeze(-1).to(states.dtype)
    return (states * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1.0)


class MMFusionJointFusion(Fusion):
    """One vision-language model as the only tower (RA-HMD's stage 1, Mei et al., EMNLP 2025): its processor and chat
    template put the image and the caption in one prompt (`prompt_template`, image first, generation prompt added,
    left padding), the model reads them together, and the last layer's state at the last prompt token (or the mean,
    `joint_pooling`) goes through Linear(hidden -> `joint_head_size`) -> ReLU; the classifier's dropout and linear
    layer follow in `MMFusionForClassification`. With `answer_loss_weight`, training adds the model's own next-token
    loss on the answer word ("No"/"Yes") at the last prompt position (see `MMFusionForClassification`).

    The vision-language model (Qwen2-VL, Qwen2.5-VL, SmolVLM/Idefics3, ...) is `MMFusionModel.vision_language_model`;
    LoRA on its language model is `lora_*` (applied by `mmfusion.vision_language`, through peft)."""

    name = "joint"
    title = "joint vision-language model"
    summary = (
        "one vision-language model (Qwen2-VL, SmolVLM, ...) reads the image and the caption together in a prompt "
        "built by its own chat template; the last prompt token's final state → MLP head → classifier"
    )
    origin = "RA-HMD (Mei et al., EMNLP 2025), stage 1"
    description = (
        "One vision-language model reads the image and the caption together, in a prompt built by its own chat "
        "template ({prompt_template!r}); the last layer's state ({joint_pooling} pooling) goes through a "
        "{joint_head_size}-unit MLP head and the classifier (RA-HMD's stage 1)."
    )
    settings = {
        "prompt_template": FusionSetting(
            DEFAULT_PROMPT_TEMPLATE,
            "The user turn of the joint prompt, `{caption}` standing for the caption; the image comes first and the "
            "model's chat template adds its own markup and the generation prompt (RA-HMD's prompt by default).",
        ),
        "joint_pooling": FusionSetting(
            "last_token",
            "last_token | mean: the last prompt token's final hidden state (RA-HMD's), or the mean over the prompt.",
        ),
        "joint_head_size": FusionSetting(1024, "Width of the joint head's hidden layer (Linear -> ReLU)."),
        "answer_loss_weight": FusionSetting(
            0.0,
            "Weight of the model's own next-token loss on the answer word (`answer_token_ids`: No/Yes) beside the "
            "classification loss; RA-HMD weighs them 1:1. 0 turns it off.",
        ),
        "vision_language_max_pixels": FusionSetting(
            768 * 768,
            "Largest image the processor passes to the model, in pixels (Qwen2-VL's `max_pixels`; larger images are "
            "resized down, keeping their aspect ratio). RA-HMD: 768x768.",
        ),
        "lora_r": FusionSetting(
            128, "LoRA rank on the language model's linear layers (peft); 0 trains without LoRA. RA-HMD: 128."
        ),
        "lora_alpha": FusionSetting(256, "LoRA alpha (scaling alpha / r). RA-HMD: 256."),
        "lora_dropout": FusionSetting(0.05, "Dropout on the LoRA branch. RA-HMD: 0.05."),
        "lora_target_modules": FusionSetting(
            "",
            "Comma-separated names of the language model's linear layers that get LoRA (e.g. q_proj,v_proj); "
            "empty: every linear layer of the language model (RA-HMD's). The vision tower and projector never do.",
        ),
    }
    joint_encoder = True
    uses_text_pooler = False

    def __init__(self, config):
        super().__init__()
        hidden_size = config.vision_language_config.get_text_config().hidden_size
        self.head = nn.Sequential(nn.Linear(hidden_size, config.joint_head_size), nn.ReLU())
        self.pooling = config.joint_pooling
        self.output_size = config.joint_head_size

    @classmethod
    def validate(cls, config) -> None:
        if getattr(config, "vision_language_config", None) is None:
            raise ValueError(
                "fusion='joint' needs a vision-language model: build it with "
                "MMFusionForClassification.from_vision_language_pretrained(path, ...) (train.py: "
                "--vision_language_model_name_or_path PATH), or pass vision_language_config."
            )
        if config.joint_pooling not in JOINT_POOLINGS:
            raise ValueError(
                f"joint_pooling must be one of {', '.join(JOINT_POOLINGS)}; got {config.joint_pooling!r}."
            )
        if "{caption}" not in config.prompt_template:
            raise ValueError(f"prompt_template must contain {{caption}}; got {config.prompt_template!r}.")
        if config.modality_dropout:
            raise ValueError("modality_dropout is not available with fusion='joint' (one prompt holds both).")
        if config.answer_loss_weight < 0:
            raise ValueError(f"answer_loss_weight must be >= 0, got {config.answer_loss_weight}.")
        if config.answer_loss_weight and not config.answer_token_ids:
            raise ValueError(
                "answer_loss_weight needs answer_token_ids (one token id per class: the answer words' first tokens); "
                "from_vision_language_pretrained sets them from the model's tokenizer."
            )
        if config.lora_r < 0 or config.lora_alpha <= 0 or not 0 <= config.lora_dropout < 1:
            raise ValueError(
                f"LoRA needs lora_r >= 0, lora_alpha > 0 and lora_dropout in [0, 1); got {config.lora_r}, "
                f"{config.lora_alpha}, {config.lora_dropout}."
            )

    def forward(self, inputs: FusionInputs) -> MMFusionModelOutput:
        model = inputs.model.vision_language_model
        outputs = model.base_model(
            input_ids=inputs.input_ids,
            inputs_embeds=inputs.inputs_embeds,
            attention_mask=inputs.attention_mask,
            pixel_values=inputs.pixel_values,
            output_hidden_states=bool(inputs.output_hidden_states),
            output_attentions=bool(inputs.output_attentions),
            return_dict=True,
            **inputs.vision_language_inputs,
        )
        states = outputs.last_hidden_state
        pooled = pool_prompt(states, inputs.attention_mask, self.pooling)
        head_dtype = self.head[0].weight.dtype
        hidden_states = getattr(outputs, "hidden_states", None)
        if hidden_states is not None and not isinstance(inputs.output_hidden_states, bool):
            hidden_states = select_hidden_states(hidden_states, inputs.output_hidden_states)
        return MMFusionModelOutput(
            pooler_output=self.head(pooled.to(head_dtype)),
            last_hidden_state=states,
            hidden_states=hidden_states,
            attentions=getattr(outputs, "attentions", None),
        )


# Hate-CLIPper's settings, shared by its two interaction fusions.
INTERACTION_SETTINGS = {
    "fusion_map_dim": FusionSetting(
        32,
        "Width of the trainable maps of the text and image embeddings (Hate-CLIPper's `map_dim`; the "
        "outer product has `fusion_map_dim**2` entries) and of the pre-output layers.",
    ),
    "fusion_num_pre_output_layers": FusionSetting(
        1, "Linear + ReLU + dropout layers between the fused features and the classifier."
    ),
    "fusion_map_dropout": FusionSetting(0.1, "Dropout after the maps (Hate-CLIPper's first dropout)."),
    "fusion_pre_output_dropout": FusionSetting(
        0.4,
        "Dropout on the fused features, before the pre-output layers (Hate-CLIPper's second); the "
        "dropout after each pre-output layer is `classifier_dropout` (its third).",
    ),
}


class MMFusionInteractionFusion(EmbeddingFusion):
    """Hate-CLIPper's interaction fusions (Kumar & Nandakumar 2022, github.com/gokulkarthik/hateclipper): trainable
    linear maps of the text and image embeddings to `fusion_map_dim`, dropout, L2 normalisation, an interaction of
    the two (`interact`), dropout, then `fusion_num_pre_output_layers` x (linear to `fusion_map_dim`, ReLU, dropout);
    the classifier (with its `classifier_dropout`) follows in `MMFusionForClassification`."""

    settings = INTERACTION_SETTINGS
    ends_in_relu = True  # with at least one pre-output layer

    def __init__(self, config):
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

    @classmethod
    def validate(cls, config) -> None:
        if config.fusion_map_dim < 1 or config.fusion_num_pre_output_layers < 0:
            raise ValueError(
                f"fusion_map_dim must be >= 1 and fusion_num_pre_output_layers >= 0; got {config.fusion_map_dim} and "
                f"{config.fusion_num_pre_output_layers}."
            )

    @staticmethod
    def interaction_size(map_dim: int) -> int:
        raise NotImplementedError

    @staticmethod
    def interact(image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def fuse(self, text_embeds: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        return self.fuse_for_retrieval(text_embeds, image_embeds)[0]

    def fuse_for_retrieval(self, text_embeds, image_embeds):
        text = F.normalize(self.text_map(text_embeds), dim=-1)
        image = F.normalize(self.image_map(image_embeds), dim=-1)
        features = self.interact(image, text)
        if not isinstance(self.pre_output[-1], nn.ReLU):  # no pre-output layer
            return self.pre_output(features), None
        before_relu = self.pre_output[:-1](features)  # RGCL's embedding: the last layer before its ReLU
        return self.pre_output[-1](before_relu), before_relu


class MMFusionCrossFusion(MMFusionInteractionFusion):
    """Hate-CLIPper's cross fusion: the outer product of the mapped image and text embeddings (the "feature
    interaction matrix", `fusion_map_dim**2` entries), flattened."""

    name = "cross"
    title = "cross-fusion (Hate-CLIPper)"
    summary = (
        "text and image embeddings (CLIP's projected ones, else the pooled outputs) mapped to 32 dims, L2-normalised; "
        "their **outer product** (32×32 feature interaction matrix) → pre-output MLP → classifier"
    )
    origin = "Hate-CLIPper (Kumar & Nandakumar 2022)"
    description = (
        "Hate-CLIPper's cross fusion (Kumar & Nandakumar, 2022): the text and image embeddings are mapped by "
        "trainable linear layers to {fusion_map_dim} dimensions and L2-normalised; their outer product (the "
        "{fusion_map_dim}x{fusion_map_dim} feature interaction matrix), flattened, goes through "
        "{fusion_num_pre_output_layers} pre-output layer(s) (linear, ReLU, dropout) before the classifier."
    )

    @staticmethod
    def interaction_size(map_dim: int) -> int:
        return map_dim * map_dim

    @staticmethod
    def interact(image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        # (B, D, 1) * (B, 1, D): Hate-CLIPper's bmm(image.unsqueeze(2), text.unsqueeze(1)), image rows
        return (image.unsqueeze(2) * text.unsqueeze(1)).flatten(1)


class MMFusionAlignFusion(MMFusionInteractionFusion):
    """Hate-CLIPper's align fusion: the element-wise product of the mapped image and text embeddings (the diagonal
    of cross fusion's interaction matrix).

    Its defaults follow RGCL's head (Mei et al. 2024, github.com/JingbiaoMei/RGCL, `scripts/experiments.sh`): maps to
    1024 dimensions with dropout 0.2, the product, dropout 0.4, 1024-wide pre-output layer(s), dropout 0.1
    (`classifier_dropout`). With Hate-CLIPper's 32-dim map training barely moved it (issue 21: a tiny random CLIP, 8
    examples, 30 AdamW steps at 1e-3: loss 0.693 -> 0.664; 0.693 -> 0.25 with a 1024-dim map). One pre-output layer
    by default, where RGCL stacks three (`configs/hateful_memes_clip_rgcl.yaml` sets 3): with transformers' weight
    init (normal, std 0.02) three 1024-wide layers sat on the demo's XOR plateau for all 12 epochs of the
    interaction-fusion test (loss 0.693, test accuracy 0.50), one layer solved it. Hate-CLIPper's settings stay
    reachable: `--fusion_map_dim 32 --fusion_map_dropout 0.1`.
    """

    name = "align"
    title = "align-fusion (Hate-CLIPper)"
    summary = "as `cross`, with the **element-wise product** of the two maps (by default 1024-dim, as in RGCL's head)"
    origin = "Hate-CLIPper; RGCL (Mei et al. 2024)"
    setting_defaults = {
        "fusion_map_dim": 1024,
        "fusion_map_dropout": 0.2,
        "fusion_pre_output_dropout": 0.4,
    }
    description = (
        "Hate-CLIPper's align fusion: the text and image embeddings are mapped by trainable linear layers to "
        "{fusion_map_dim} dimensions and L2-normalised; their element-wise product goes through "
        "{fusion_num_pre_output_layers} pre-output layer(s) (linear, ReLU, dropout) before the classifier."
    )

    @staticmethod
    def interaction_size(map_dim: int) -> int:
        return map_dim

    @staticmethod
    def interact(image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return image * text


class MMFusionLateFusion(EmbeddingFusion):
    """MMF's score-level late fusion (`LateFusion`): a text head and an image head, logits averaged.

    Each head is an MLP (linear to `fusion_hidden_size`, ReLU, dropout, then a linear output layer). The two output
    layers live in the classifier of `MMFusionForClassification`, which reads `[h_text; h_image]`: a linear layer on
    a concatenation is exactly the average of two per-modality linear layers, `W [h_t; h_i] + b =
    ((2 W_t h_t + b) + (2 W_i h_i + b)) / 2`, so the logits are the average of the two heads' scores (and the
    modules keep the base-model / classifier split every fusion has). No interaction between the modalities.
    """

    name = "late"
    title = "late-fusion (score averaging)"
    summary = "a text head and an image head (MLPs) score separately, logits averaged"
    origin = "MMF's `late_fusion`"
    description = (
        "MMF's score-level late fusion: a text head and an image head (each a {fusion_hidden_size}-unit MLP) "
        "score the example separately and their logits are averaged; no interaction between the modalities."
    )
    settings = {"fusion_hidden_size": FUSION_HIDDEN_SIZE}
    ends_in_relu = True

    def __init__(self, config):
        super().__init__()
        width = config.fusion_hidden_size
        self.text_head = nn.Sequential(
            nn.Linear(config.text_embed_dim, width), nn.ReLU(), nn.Dropout(config.classifier_dropout)
        )
        self.image_head = nn.Sequential(
            nn.Linear(config.image_embed_dim, width), nn.ReLU(), nn.Dropout(config.classifier_dropout)
        )
        self.output_size = 2 * width

    def fuse(self, text_embeds: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        return self.fuse_for_retrieval(text_embeds, image_embeds)[0]

    def fuse_for_retrieval(self, text_embeds, image_embeds):
        # Each head is (linear, ReLU, dropout): retrieval reads the two linear outputs, before the ReLU.
        linear = [self.text_head[0](text_embeds), self.image_head[0](image_embeds)]
        heads = [head[2](head[1](value)) for head, value in zip((self.text_head, self.image_head), linear)]
        return torch.cat(heads, dim=-1), torch.cat(linear, dim=-1)


# Unimodal baselines (the Hateful Memes paper's Text BERT / Image-Grid, MMF's unimodal_text / unimodal_image): what
# the fused model must beat, trained the same way.
class MMFusionTextOnly(EmbeddingFusion):
    """Unimodal text baseline (the Hateful Memes paper's Text BERT, MMF's `unimodal_text`): the classifier reads the
    text embedding alone (`MMFusionModel.text_embeddings`, pooled with `text_pooling`); no vision tower is built."""

    name = "text"
    title = "text-only"
    summary = "unimodal baseline: the text tower alone (no image needed) → classifier"
    origin = "the Hateful Memes paper's Text BERT, MMF's `unimodal_text`"
    description = (
        "Unimodal text baseline: the text tower alone ({text_pooling} pooling of the caption) and a linear "
        "classifier; no image is read."
    )
    needs_image = False

    def __init__(self, config):
        super().__init__()
        self.output_size = config.text_embed_dim

    def fuse(self, text_embeds: torch.Tensor, image_embeds: None = None) -> torch.Tensor:
        return text_embeds


class MMFusionImageOnly(EmbeddingFusion):
    """Unimodal image baseline (the paper's Image-Grid, MMF's `unimodal_image`): the classifier reads the image
    embedding alone (`MMFusionModel.image_embeddings`); no text tower is built."""

    name = "image"
    title = "image-only"
    summary = "unimodal baseline: the vision tower's pooled features alone (no caption needed) → classifier"
    origin = "the paper's Image-Grid, MMF's `unimodal_image`"
    description = (
        "Unimodal image baseline: the vision tower's pooled features (projected, for a dual encoder) and a "
        "linear classifier; no caption is read."
    )
    needs_text = False
    uses_text_pooler = False

    def __init__(self, config):
        super().__init__()
        self.output_size = config.image_embed_dim

    def fuse(self, text_embeds: None, image_embeds: torch.Tensor) -> torch.Tensor:
        return image_embeds


__all__ = [
    "FUSIONS",
    "EmbeddingFusion",
    "Fusion",
    "FusionInputs",
    "FusionSetting",
    "DEFAULT_PROMPT_TEMPLATE",
    "JOINT_POOLINGS",
    "MMFusionModelOutput",
    "TokenFusion",
    "fusion_names",
    "fusion_settings",
    "fusion_table",
    "image_tokens_from_features",
    "last_token_states",
    "pool_prompt",
    "pool_image_features",
    "pool_text",
    "register_fusion",
]
