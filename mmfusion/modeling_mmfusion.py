"""mmfusion models: a text tower and a vision tower joined by one of the fusions in the registry (`FUSIONS`,
`fusions.py`: the fusion modules and their contract).

Copied next to every checkpoint (remote code): it imports only torch, transformers and its flat siblings.
"""

from __future__ import annotations

import inspect
import json
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import transformers
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPooling, SequenceClassifierOutput
from transformers.utils import cached_file
from transformers.utils.generic import can_return_tuple

from .configuration_mmfusion import DUAL_ENCODER_TOWERS, MMFusionConfig
from .fusions import (
    FUSIONS,
    Fusion,
    FusionInputs,
    MMFusionModelOutput,
    default_attention_mask,
    image_tokens_from_features,
    last_token_states,
    pool_image_features,
    pool_text,
)
from .memory import (
    LabelledMemory,
    LabelledMemoryError,
    combine_probabilities,
    model_fingerprint,
    remove_memory_files,
)
from .torchvision_resnet import load_torchvision_resnet, torchvision_architecture
from .vision_language import (
    adapter_state_dict,
    add_lora,
    check_adapter_keys,
    has_lora,
    language_modules_of,
    merged_state_dict,
    vision_language_model_from_config,
    vision_modules_of,
)


@dataclass
class MMFusionClassifierOutput(SequenceClassifierOutput):
    """
    `SequenceClassifierOutput` plus `fusion_attentions`: attention fusion's own weights (see `MMFusionModelOutput`),
    and `embeddings`: the fused representation the classifier reads (before its dropout), of shape
    `(batch_size, output_size)`, or for the fusions whose representation ends in a ReLU (`Fusion.ends_in_relu`) the
    layer before that ReLU (`MMFusionModelOutput.retrieval_embeds`, RGCL's embedding). Retrieval (nearest labelled
    examples, RGCL's objective) works on these, L2-normalised (see `MMFusionForClassification.embed`). The Trainer leaves them out of its predictions
    (`MMFusionConfig.keys_to_ignore_at_inference`).
    """

    fusion_attentions: torch.FloatTensor | None = None
    embeddings: torch.FloatTensor | None = None


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
        if isinstance(module, Fusion):
            module.init_weights()

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


def _memory_folder(name_or_path, kwargs) -> str | None:
    """The folder holding a checkpoint's memory files (a local folder, or the Hub cache's snapshot), None without."""
    if os.path.isdir(name_or_path):
        return os.fspath(name_or_path)
    options = {key: kwargs[key] for key in ("revision", "cache_dir", "token", "local_files_only") if key in kwargs}
    found = None
    for filename in ("memory.json", "memory.safetensors"):
        try:
            found = cached_file(
                name_or_path,
                filename,
                _raise_exceptions_for_missing_entries=False,
                _raise_exceptions_for_connection_errors=False,
                **options,
            )
        except OSError:
            return None
        if found is None:
            return None
    return os.path.dirname(found)


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

    def __init__(self, config: MMFusionConfig, vision_language_model: nn.Module | None = None):
        super().__init__(config)
        fusion_class = FUSIONS[config.fusion]
        # A joint fusion's one tower: an image-text-to-text model (`from_vision_language_pretrained` passes a loaded
        # one in); its loaded weights are marked initialised, so `post_init` leaves them alone.
        self.vision_language_model = None
        if fusion_class.joint_encoder:
            self.vision_language_model = vision_language_model or vision_language_model_from_config(
                config.vision_language_config
            )
        builds_towers = not fusion_class.joint_encoder
        # Unimodal baselines build only the tower they read (no unused weights to save, load or leave gradient-less).
        self.text_model = _tower_from_config(config.text_config) if fusion_class.needs_text and builds_towers else None
        self.vision_model = (
            _tower_from_config(config.vision_config) if fusion_class.needs_image and builds_towers else None
        )
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
        if self.vision_language_model is not None and config.vision_language_weights in ("lora", "adapter"):
            add_lora(self.vision_language_model, config)  # a checkpoint saved with its LoRA layers unmerged
        for modules, frozen in (
            (self.text_tower_modules(), config.freeze_text_encoder),
            (self.vision_tower_modules(), config.freeze_vision_encoder),
        ):
            for module in modules:
                if frozen:
                    module.requires_grad_(False)

    def text_tower_modules(self) -> list[nn.Module]:
        """The modules of the text tower, its projection included (frozen, cached and pretrained with it); for a
        joint model, the vision-language model's language model and output layer."""
        if self.vision_language_model is not None:
            return language_modules_of(self.vision_language_model)
        return [module for module in (self.text_model, self.text_projection) if module is not None]

    def vision_tower_modules(self) -> list[nn.Module]:
        """The modules of the vision tower, its projection included (frozen, cached and pretrained with it); for a
        joint model, the vision-language model's vision tower and projector."""
        if self.vision_language_model is not None:
            return vision_modules_of(self.vision_language_model)
        return [module for module in (self.vision_model, self.visual_projection) if module is not None]

    def tower_parameter_names(self, prefix: str = "") -> set[str]:
        """Names of the parameters that belong to the (pretrained) towers and their projections; every other
        parameter (fusion, classifier) starts fresh. `prefix` as in `named_parameters`."""
        return {
            f"{prefix}{module_name}.{name}"
            for module_name, module in self.named_children()
            if module in self.text_tower_modules() + self.vision_tower_modules()
            for name, _ in module.named_parameters()
        }

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
        if self.vision_language_model is not None:
            for modules, frozen in (
                (self.text_tower_modules(), self.config.freeze_text_encoder),
                (self.vision_tower_modules(), self.config.freeze_vision_encoder),
            ):
                for module in modules if frozen else ():
                    module.eval()
        return self

    def get_input_embeddings(self) -> nn.Module:
        """The text tower's word embeddings (what `resize_token_embeddings` resizes after tokens are added); None
        for the image-only baseline, which has no text tower; a joint model's vision-language model's."""
        if self.vision_language_model is not None:
            return self.vision_language_model.get_input_embeddings()
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
        attention_mask = default_attention_mask(input_ids, inputs_embeds, attention_mask)
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

    def _vision_language_input_names(self) -> set[str]:
        """What the vision-language model takes beside what `forward` names (its processor's extra outputs)."""
        taken = set(inspect.signature(self.vision_language_model.base_model.forward).parameters)
        return taken - {"input_ids", "inputs_embeds", "attention_mask", "pixel_values", "kwargs", "return_dict"}

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
            (`Fusion.reads_embeddings`): what a frozen text tower's cache holds.
        image_embeds (`torch.FloatTensor` of shape `(batch_size, image_embed_dim)`, *optional*):
            Precomputed `image_embeddings(...)`, instead of the image, for the same fusions.
        """
        fusion = self.fusion
        if (text_embeds is not None or image_embeds is not None) and not fusion.reads_embeddings:
            raise ValueError(
                f"fusion={self.config.fusion!r} reads the towers' token states: `text_embeds`/`image_embeds` only "
                "serve the fusions that read embeddings."
            )
        # The unimodal baselines do not need (and ignore) the other modality's inputs.
        if fusion.needs_text and sum(value is not None for value in (input_ids, inputs_embeds, text_embeds)) != 1:
            raise ValueError(
                "Pass exactly one of `input_ids` and `inputs_embeds` (use the processor on the caption, even an "
                "empty one), or precomputed `text_embeds`."
            )
        if fusion.needs_image and sum(v is not None for v in (pixel_values, image_features, image_embeds)) != 1:
            raise ValueError(
                "Pass exactly one of `pixel_values` and `image_features` (precomputed features), or precomputed "
                "`image_embeds`."
            )
        if image_features is not None and not isinstance(image_features, torch.Tensor):
            raise TypeError(
                "image_features must be a tensor: pass `get_image_features(pixel_values).last_hidden_state`, not "
                f"the {type(image_features).__name__} itself."
            )
        vision_language_inputs = None
        if self.vision_language_model is not None:  # Qwen2-VL's image_grid_thw, Idefics3's pixel_attention_mask, ...
            vision_language_inputs = {
                name: value for name, value in kwargs.items() if name in self._vision_language_input_names()
            }
        inputs = FusionInputs(
            self,
            vision_language_inputs=vision_language_inputs,
            input_ids=input_ids if fusion.needs_text else None,
            attention_mask=attention_mask if fusion.needs_text else None,
            token_type_ids=token_type_ids if fusion.needs_text else None,
            inputs_embeds=inputs_embeds if fusion.needs_text else None,
            pixel_values=pixel_values,
            image_features=image_features,
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            output_hidden_states=_output_flag(
                output_hidden_states, self.config, "output_hidden_states", "text_config"
            ),
            output_attentions=_output_flag(output_attentions, self.config, "output_attentions", "text_config"),
        )
        return fusion(inputs)


class MMFusionForClassification(MMFusionPreTrainedModel):
    """An mmfusion model with a linear classifier on the fused representation.

    Single-label classification (cross-entropy, any `num_labels` >= 2), multi-label (BCE) or regression
    (`num_labels=1`, MSE), chosen like transformers' `*ForSequenceClassification` via `config.problem_type`.
    """

    def __init__(self, config: MMFusionConfig, vision_language_model: nn.Module | None = None):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.mmfusion = MMFusionModel(config, vision_language_model=vision_language_model)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(self.mmfusion.output_size, config.num_labels)
        # The labelled memory (`memory.py`): loaded by `from_pretrained` from the checkpoint's memory files, saved by
        # `save_pretrained` while its fingerprint is this model's; None without one.
        self.memory: LabelledMemory | None = None
        self.post_init()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, plus the checkpoint's labelled memory as `model.memory` (None when it
        has none); a memory another model built (fingerprint mismatch) is refused."""
        loaded = cls._load_weights(pretrained_model_name_or_path, *args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # output_loading_info=True: (model, info)
        if pretrained_model_name_or_path is not None:
            folder = _memory_folder(pretrained_model_name_or_path, kwargs)
            model.memory = LabelledMemory.load(folder) if folder is not None else None
            if model.memory is not None:
                model.memory.check_model(model, where=f"The memory in {folder}")
        return loaded

    def save_pretrained(self, save_directory, *args, vision_language_weights: str | None = None, **kwargs):
        """`PreTrainedModel.save_pretrained` (a joint model's layout: `_save_weights`), plus the labelled memory when
        the model has one that it built (any other memory files in the folder are removed: their embeddings would
        not match these weights)."""
        self._save_weights(save_directory, *args, vision_language_weights=vision_language_weights, **kwargs)
        if kwargs.get("is_main_process", True) and os.path.isdir(save_directory):
            if self.memory is not None and self.memory.fingerprint == model_fingerprint(self):
                self.memory.save(save_directory)
            else:
                remove_memory_files(save_directory)

    def add_to_memory(self, ids, labels, captions=None, images=None, **inputs) -> LabelledMemory:
        """Embed a processed batch (`forward`'s inputs) with this model, frozen (eval mode, no gradient), and add the
        rows to `self.memory` (created when the model has none). Ids already there are refused, naming them."""
        if self.memory is None:
            self.memory = self.empty_memory()
        else:
            self.memory.check_model(self)
        training = self.training
        self.eval()
        try:
            with torch.no_grad():
                embeddings = self.embed(**inputs)
        finally:
            self.train(training)
        self.memory.add(ids, embeddings, labels, captions=captions, images=images)
        return self.memory

    def empty_memory(self) -> LabelledMemory:
        """A memory with no rows for this model: its fingerprint, classes and embedding width."""
        names = [self.config.id2label[i] for i in sorted(self.config.id2label, key=int)]
        return LabelledMemory.empty(
            self.mmfusion.output_size,
            label_names=names,
            fingerprint=model_fingerprint(self),
            multi_label=self.config.problem_type == "multi_label_classification",
        )

    def save_memory(self, save_directory) -> None:
        """Write `self.memory` into `save_directory` (atomically, see `LabelledMemory.save`), after checking that this
        model built it (`MemoryMismatchError` otherwise, and nothing is written)."""
        if self.memory is None:
            raise LabelledMemoryError("This model has no labelled memory to save.")
        self.memory.check_model(self)
        self.memory.save(save_directory)

    def memory_probabilities(self, head_probabilities, embeddings, mode: str | None = None):
        """The probabilities of the config's `prediction_mode` (or `mode`): the head's as given, or combined with the
        kNN score of the L2-normalised `embeddings` over `self.memory` (see `memory.py`)."""
        mode = mode or self.config.prediction_mode
        if mode == "head":
            return head_probabilities
        if self.memory is None:
            raise LabelledMemoryError(f"prediction_mode {mode!r} needs a labelled memory; this model has none.")
        scores = self.memory.knn_scores(embeddings, self.config.knn_k)
        multi_label = self.config.problem_type == "multi_label_classification"
        return combine_probabilities(head_probabilities, scores, mode, self.config.mix_weight, multi_label)

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
            **kwargs,
        )
        logits = self.classifier(self.dropout(outputs.pooler_output))
        loss = self.compute_loss(logits, labels) if labels is not None else None
        if loss is not None and getattr(self.config, "answer_loss_weight", 0) and self.mmfusion.vision_language_model:
            loss = loss + self.config.answer_loss_weight * self.answer_loss(
                outputs.last_hidden_state, attention_mask, labels
            )
        return MMFusionClassifierOutput(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            fusion_attentions=outputs.fusion_attentions,
            embeddings=outputs.pooler_output if outputs.retrieval_embeds is None else outputs.retrieval_embeds,
        )

    def answer_loss(self, states: torch.Tensor, attention_mask: torch.Tensor | None, labels: torch.Tensor):
        """A joint model's own next-token loss on the answer word at the last prompt position (RA-HMD's second loss):
        the language model's output layer on the last prompt token's state, cross-entropy over the whole vocabulary
        with each row's class's answer token (`config.answer_token_ids`) as the target."""
        if labels.dim() != 1:
            raise ValueError("The answer-token loss needs one class per example (not multi-label targets).")
        output_layer = self.mmfusion.vision_language_model.get_output_embeddings()
        last = last_token_states(states, attention_mask)
        answer_logits = output_layer(last.to(output_layer.weight.dtype)).float()
        targets = torch.tensor(self.config.answer_token_ids, device=labels.device)[labels]
        return F.cross_entropy(answer_logits, targets.to(answer_logits.device))

    @classmethod
    def from_vision_language_pretrained(
        cls,
        vision_language_model_name_or_path: str,
        *,
        answer_words: list[str] | None = None,
        model_kwargs: dict | None = None,
        use_lora: bool = True,
        **config_kwargs,
    ) -> MMFusionForClassification:
        """A joint model (`fusion="joint"`): one pretrained image-text-to-text model (Qwen2-VL, Qwen2.5-VL,
        SmolVLM/Idefics3, ...: `AutoModelForImageTextToText`) as the only tower, a fresh head, and LoRA layers on its
        language model (`lora_r`, `lora_alpha`, `lora_dropout`, `lora_target_modules`; `use_lora=False` or
        `lora_r=0`: none). The vision tower and projector are frozen by default (`freeze_vision_encoder`).

        `answer_words`: each class's answer, whose first token is the answer-token loss's target (default: "No",
        "Yes" for two classes, else the class names). `model_kwargs` go to the model's `from_pretrained` (`dtype=`,
        `attn_implementation=`, `quantization_config=` for a 4-bit base, ...); the rest to `MMFusionConfig`
        (`num_labels`, `id2label`, `prompt_template`, `joint_pooling`, `answer_loss_weight`, ...). Build the matching
        processor with `MMFusionProcessor.from_vision_language_pretrained(path, config=model.config)`.

        Example:
        ```python
        model = MMFusionForClassification.from_vision_language_pretrained(
            "Qwen/Qwen2-VL-2B-Instruct", num_labels=2, answer_loss_weight=1.0, model_kwargs={"dtype": torch.bfloat16}
        )
        ```
        """
        from transformers import AutoModelForImageTextToText, AutoTokenizer

        vision_language_model = AutoModelForImageTextToText.from_pretrained(
            vision_language_model_name_or_path, **(model_kwargs or {})
        )
        config_kwargs.setdefault("freeze_vision_encoder", True)
        answer_loss_weight = config_kwargs.pop("answer_loss_weight", 0.0)  # set once the answer tokens are known
        config = MMFusionConfig(
            fusion="joint",
            vision_language_config=vision_language_model.config,
            vision_language_model_name_or_path=str(vision_language_model_name_or_path),
            **config_kwargs,
        )
        tokenizer = AutoTokenizer.from_pretrained(vision_language_model_name_or_path)
        config.answer_token_ids = answer_token_ids(tokenizer, answer_words, config)
        config.answer_loss_weight = answer_loss_weight
        config.validate_fusion_settings()
        attention = vision_language_model.config._attn_implementation
        model = cls(config, vision_language_model=vision_language_model)
        # Building the wrapper resets the attention implementation of the configs it holds; without this the loaded
        # model would run with none chosen (and, in transformers 5, without its attention mask).
        model.mmfusion.vision_language_model.set_attn_implementation(attention)
        if use_lora and config.lora_r > 0:
            add_lora(model.mmfusion.vision_language_model, config)
            config.vision_language_weights = "lora"
        return model

    def _save_weights(self, save_directory, *args, vision_language_weights: str | None = None, **kwargs):
        """`PreTrainedModel.save_pretrained` (without the memory); for a joint model with LoRA layers, `vision_language_weights` chooses
        what the weights file holds (`mmfusion.vision_language`): `"full"` (the LoRA update merged: self-contained,
        loads with transformers alone), `"adapter"` (the LoRA weights and the head; the base model's id is recorded)
        or `"lora"` (unmerged, as training checkpoints are; the default). The model itself is not changed."""
        vision_language_model = self.mmfusion.vision_language_model
        if vision_language_model is None:
            return super().save_pretrained(save_directory, *args, **kwargs)
        live = "lora" if has_lora(vision_language_model) else "full"
        layout = vision_language_weights or self.config.vision_language_weights
        if live == "full" and layout != "full":
            raise ValueError(f"This model has no LoRA layers: it can only be saved whole, not as {layout!r}.")
        if layout == "adapter" and not self.config.vision_language_model_name_or_path:
            raise ValueError("An adapter checkpoint needs the base model's id (vision_language_model_name_or_path).")
        if layout != live:
            kwargs["state_dict"] = merged_state_dict(self) if layout == "full" else adapter_state_dict(self)
        # Keys as this model names them. transformers would rename a VLM's keys to its legacy checkpoint layout
        # (Qwen2-VL: `model.layers.*` for `model.language_model.layers.*`), which only `from_pretrained` renames back:
        # the Trainer reloads its best checkpoint with a plain, non-strict `load_state_dict`, which would then skip
        # every language-model weight without a word, and an adapter is checked key by key.
        kwargs.setdefault("save_original_format", False)
        kept = self.config.vision_language_weights
        self.config.vision_language_weights = layout
        try:
            return super().save_pretrained(save_directory, *args, **kwargs)
        finally:
            self.config.vision_language_weights = kept

    @classmethod
    def _load_weights(cls, pretrained_model_name_or_path, *args, **kwargs):
        """`PreTrainedModel.from_pretrained` (without the memory); an adapter checkpoint (`vision_language_weights="adapter"`) is built on
        its base model (`vision_language_model_name_or_path`, or `base_model=` here) and its LoRA and head weights
        are loaded over it, every key checked: an adapter that does not fit the base stops with the keys named."""
        config = kwargs.get("config")
        if not isinstance(config, MMFusionConfig):
            config = MMFusionConfig.from_pretrained(
                pretrained_model_name_or_path,
                **{k: kwargs[k] for k in ("revision", "token", "cache_dir", "subfolder") if k in kwargs},
            )
        if getattr(config, "vision_language_weights", "full") != "adapter":
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        return _load_adapter_checkpoint(cls, pretrained_model_name_or_path, config, **kwargs)

    def embed(self, **inputs) -> torch.Tensor:
        """The L2-normalised fused representation of a batch (`embeddings` of `forward`), the vector retrieval
        compares by inner product. Takes `forward`'s inputs; the caller chooses train/eval mode and grad."""
        inputs.pop("labels", None)
        return F.normalize(self(**inputs, return_dict=True).embeddings, dim=-1)

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


def answer_token_ids(tokenizer, answer_words: list[str] | None, config: MMFusionConfig) -> list[int]:
    """The first token of each class's answer word ("No"/"Yes" for two classes, else the class names), as the model
    would generate it right after the generation prompt; they must differ."""
    if answer_words is None:
        id2label = {int(index): name for index, name in (config.id2label or {}).items()}
        answer_words = ["No", "Yes"] if config.num_labels == 2 else [id2label[i] for i in range(config.num_labels)]
    if len(answer_words) != config.num_labels:
        raise ValueError(f"Got {len(answer_words)} answer words for {config.num_labels} classes: {answer_words}.")
    ids = [tokenizer(word, add_special_tokens=False)["input_ids"][0] for word in answer_words]
    if len(set(ids)) != len(ids):
        raise ValueError(f"The answer words {answer_words} start with the same token ({ids}); choose other words.")
    return ids


def _load_adapter_checkpoint(cls, path, config: MMFusionConfig, *, base_model=None, **kwargs):
    """An adapter checkpoint: the base vision-language model, LoRA layers as the config says, then the adapter's
    LoRA and head weights, which must be exactly the model's LoRA and head weights."""
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText

    base_path = base_model or config.vision_language_model_name_or_path
    if not base_path:
        raise ValueError(f"{path} is an adapter checkpoint without its base model's id; pass base_model=.")
    load_kwargs = {k: kwargs[k] for k in ("dtype", "device_map", "attn_implementation", "revision") if k in kwargs}
    vision_language_model = AutoModelForImageTextToText.from_pretrained(base_path, **load_kwargs)
    attention = vision_language_model.config._attn_implementation
    model = cls(config, vision_language_model=vision_language_model)  # LoRA layers added for "adapter" weights
    model.mmfusion.vision_language_model.set_attn_implementation(attention)  # see from_vision_language_pretrained
    weights = cached_file(path, "model.safetensors")
    state = load_file(weights)
    expected = set(adapter_state_dict(model))
    check_adapter_keys(set(state), expected, path)
    model.load_state_dict(state, strict=False)  # the other keys are the base model's, loaded above
    return model.eval()


MMFusionModel.register_for_auto_class("AutoModel")
MMFusionForClassification.register_for_auto_class("AutoModelForSequenceClassification")

__all__ = [
    "MMFusionPreTrainedModel",
    "MMFusionModel",
    "MMFusionForClassification",
    "MMFusionModelOutput",
    "MMFusionClassifierOutput",
    "image_tokens_from_features",
    "pool_image_features",
    "pool_text",
    "sentence_transformers_pooling",
]
