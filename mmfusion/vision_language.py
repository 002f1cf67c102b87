"""The vision-language model of a joint mmfusion model (`fusion="joint"`): its parts, LoRA on its language model, and
the three ways a checkpoint holds its weights.

Copied next to every checkpoint (remote code): it imports only torch and transformers; peft is imported when LoRA
layers are built (training, or loading a checkpoint saved with them unmerged), never for a merged checkpoint.

Weights layouts (`MMFusionConfig.vision_language_weights`):
- `"full"`: every weight, the LoRA update merged into the base weights (or no LoRA at all). Self-contained: loads
  with transformers alone (`trust_remote_code=True`). What small models are saved as.
- `"lora"`: every weight with the LoRA layers unmerged (`...q_proj.base_layer.weight`, `...q_proj.lora_A.default.weight`):
  how a model training with LoRA is saved (the Trainer's checkpoints). Loading needs peft.
- `"adapter"`: only the LoRA weights and the fresh head (fusion and classifier); the base weights are read from
  `vision_language_model_name_or_path` on load. What large models are saved as (megabytes instead of gigabytes).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoModelForImageTextToText

VISION_LANGUAGE_PREFIX = "mmfusion.vision_language_model."
LORA_MARKER = ".lora_"  # in the names of peft's LoRA parameters (lora_A, lora_B, ...)
# Above this many parameters a joint model is saved as its adapter and head by default (`default_weights_layout`).
MERGED_SAVE_MAX_PARAMETERS = 1_000_000_000


def vision_language_model_from_config(config) -> nn.Module:
    """A freshly initialised image-text-to-text model (`AutoModelForImageTextToText`) for `config`."""
    return AutoModelForImageTextToText.from_config(config)


def language_model_of(model: nn.Module) -> nn.Module:
    """The language model (decoder) of an image-text-to-text model: Qwen2-VL's `model.language_model`, Idefics3's
    `model.text_model`, LLaVA's `model.language_model`."""
    decoder = model.get_decoder()
    if decoder is model or decoder is model.base_model:
        raise ValueError(f"Cannot find the language model inside {type(model).__name__}.")
    return decoder


def vision_modules_of(model: nn.Module) -> list[nn.Module]:
    """The vision tower and the projector into the language model (everything of the multimodal base model but the
    language model): Qwen2-VL's `visual` (its merger included), Idefics3's `vision_model` and `connector`, LLaVA's
    `vision_tower` and `multi_modal_projector`."""
    language_model = language_model_of(model)
    return [module for module in model.base_model.children() if module is not language_model]


def language_modules_of(model: nn.Module) -> list[nn.Module]:
    """The language model and the output layer (`lm_head`, the answer-token loss reads it)."""
    modules = [language_model_of(model)]
    head = model.get_output_embeddings()
    if head is not None:
        modules.append(head)
    return modules


def lora_target_names(model: nn.Module, target_modules: str = "") -> list[str]:
    """Full names (inside `model`) of the language model's linear layers that get LoRA: all of them, or those whose
    last name component is listed in `target_modules` (comma-separated, e.g. `"q_proj,v_proj"`)."""
    language_model = language_model_of(model)
    inside = {id(module) for module in language_model.modules()}
    wanted = {name.strip() for name in target_modules.split(",") if name.strip()}
    names = [
        name
        for name, module in model.named_modules()
        if id(module) in inside
        and isinstance(getattr(module, "base_layer", module), nn.Linear)  # a linear layer, or LoRA's wrapper of one
        and (not wanted or name.rsplit(".", 1)[-1] in wanted)
        # not LoRA's own layers nor the layer it wraps, once LoRA is in place
        and LORA_MARKER not in f".{name}"
        and ".base_layer" not in f".{name}"
    ]
    if not names:
        raise ValueError(
            f"No linear layer of the language model matches lora_target_modules={target_modules!r}; its linear layers "
            "end in: "
            + ", ".join(
                sorted({n.rsplit(".", 1)[-1] for n, m in language_model.named_modules() if isinstance(m, nn.Linear)})
            )
        )
    return names


def add_lora(model: nn.Module, config) -> nn.Module:
    """Put LoRA layers (peft) on the vision-language model's language model, as `config` says (`lora_r`,
    `lora_alpha`, `lora_dropout`, `lora_target_modules`), in place; only the LoRA weights stay trainable there."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as error:  # pragma: no cover - peft is a dependency of training and of adapter checkpoints
        raise ImportError(
            "LoRA on the vision-language model needs peft: pip install peft (a merged checkpoint, "
            "vision_language_weights='full', loads without it)."
        ) from error
    lora_config = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=lora_target_names(model, config.lora_target_modules),
        bias="none",
    )
    inject_adapter_in_model(lora_config, model)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(LORA_MARKER in f".{name}")
    return model


def has_lora(model: nn.Module) -> bool:
    return any(LORA_MARKER in f".{name}" for name, _ in model.named_parameters())


@torch.no_grad()
def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """`model.state_dict()` with every LoRA layer's update merged into its base weight, under the base layer's own
    name (`q_proj.base_layer.weight` + LoRA -> `q_proj.weight`): the model as if trained without LoRA. The model
    itself is not changed (training can go on)."""
    from peft.tuners.lora import LoraLayer

    state = model.state_dict()
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        prefix = f"{name}." if name else ""
        base = module.get_base_layer()
        weight = base.weight.detach().clone()
        for adapter in module.active_adapters:
            if adapter in module.lora_A:
                weight += module.get_delta_weight(adapter).to(weight.dtype)
        for key in [key for key in state if key.startswith(prefix)]:  # base_layer.*, lora_A.*, lora_B.*
            del state[key]
        state[prefix + "weight"] = weight
        if getattr(base, "bias", None) is not None:
            state[prefix + "bias"] = base.bias.detach().clone()
    return state


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA weights and everything outside the vision-language model (the head): what an adapter checkpoint
    holds."""
    return {
        key: value
        for key, value in model.state_dict().items()
        if not key.startswith(VISION_LANGUAGE_PREFIX) or LORA_MARKER in key
    }


def default_weights_layout(model: nn.Module) -> str:
    """How a trained joint model is saved by default: merged (`"full"`, self-contained) up to
    `MERGED_SAVE_MAX_PARAMETERS`, as its adapter and head (`"adapter"`) above, when it has LoRA layers."""
    if not has_lora(model):
        return "full"
    return "full" if model.num_parameters() <= MERGED_SAVE_MAX_PARAMETERS else "adapter"


def check_adapter_keys(found: set[str], expected: set[str], path) -> None:
    """Stop, naming the keys, when an adapter checkpoint does not fit the model built from its base: its weights would
    otherwise be left out and the model would run untrained."""
    missing, unexpected = sorted(expected - found), sorted(found - expected)
    if not missing and not unexpected:
        return

    def show(keys):
        return ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")

    raise ValueError(
        f"The adapter checkpoint {path} does not fit its base model: "
        + (f"{len(missing)} weight(s) the model expects are missing ({show(missing)}); " if missing else "")
        + (f"{len(unexpected)} weight(s) match nothing in the model ({show(unexpected)}); " if unexpected else "")
        + "it was saved for another base model, another LoRA configuration (lora_r, lora_target_modules) or another "
        "key layout (transformers v5 nests a VLM's language model as model.language_model.*)."
    )


__all__ = [
    "LORA_MARKER",
    "MERGED_SAVE_MAX_PARAMETERS",
    "VISION_LANGUAGE_PREFIX",
    "add_lora",
    "adapter_state_dict",
    "check_adapter_keys",
    "default_weights_layout",
    "has_lora",
    "language_model_of",
    "language_modules_of",
    "lora_target_names",
    "merged_state_dict",
    "vision_language_model_from_config",
    "vision_modules_of",
]
