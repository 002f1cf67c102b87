"""torchvision ResNets as transformers `ResNetModel`s.

torchvision's resnet18/34/50/101/152 (v1.5: stride on the 3x3 convolution) have exactly the layout of transformers'
`ResNetModel` with the matching `ResNetConfig`, so their weights are renamed once at load time. The model then
saves and loads like any transformers tower and a checkpoint never needs torchvision.
"""

from __future__ import annotations

import re

import torch
from transformers import ResNetConfig, ResNetModel
from transformers.utils import is_torchvision_available

# arch -> (layer type, blocks per stage, output channels per stage)
TORCHVISION_RESNETS = {
    "resnet18": ("basic", [2, 2, 2, 2], [64, 128, 256, 512]),
    "resnet34": ("basic", [3, 4, 6, 3], [64, 128, 256, 512]),
    "resnet50": ("bottleneck", [3, 4, 6, 3], [256, 512, 1024, 2048]),
    "resnet101": ("bottleneck", [3, 4, 23, 3], [256, 512, 1024, 2048]),
    "resnet152": ("bottleneck", [3, 8, 36, 3], [256, 512, 1024, 2048]),
}

# How a vision tower name asks for torchvision's weights: "torchvision/resnet18".
TORCHVISION_PREFIX = "torchvision/"

_NORM_SUFFIXES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def torchvision_architecture(name_or_path: str | None) -> str | None:
    """`"resnet18"` for `"torchvision/resnet18"`; None for any other tower name (a Hub id or a local folder)."""
    if name_or_path and name_or_path.startswith(TORCHVISION_PREFIX):
        return name_or_path.removeprefix(TORCHVISION_PREFIX)
    return None


def torchvision_resnet_config(arch: str) -> ResNetConfig:
    """The `ResNetConfig` with the same shape as torchvision's `arch`."""
    if arch not in TORCHVISION_RESNETS:
        raise ValueError(f"Unknown torchvision ResNet {arch!r}; expected one of {', '.join(TORCHVISION_RESNETS)}.")
    layer_type, depths, hidden_sizes = TORCHVISION_RESNETS[arch]
    return ResNetConfig(embedding_size=64, hidden_sizes=hidden_sizes, depths=depths, layer_type=layer_type)


def _rename(key: str) -> str | None:
    if key.startswith("fc."):
        return None  # the ImageNet classifier: towers stop at the feature map
    if key == "conv1.weight":
        return "embedder.embedder.convolution.weight"
    if key.startswith("bn1."):
        return "embedder.embedder.normalization." + key[len("bn1.") :]
    match = re.fullmatch(r"layer(\d+)\.(\d+)\.(.+)", key)
    if match is None:
        raise KeyError(f"Unexpected torchvision ResNet weight {key!r}")
    stage, block, rest = int(match[1]) - 1, match[2], match[3]
    prefix = f"encoder.stages.{stage}.layers.{block}."
    if conv := re.fullmatch(r"conv(\d)\.weight", rest):
        return prefix + f"layer.{int(conv[1]) - 1}.convolution.weight"
    if norm := re.fullmatch(r"bn(\d)\.(\w+)", rest):
        return prefix + f"layer.{int(norm[1]) - 1}.normalization.{norm[2]}"
    if rest == "downsample.0.weight":
        return prefix + "shortcut.convolution.weight"
    if rest.startswith("downsample.1.") and rest.rsplit(".", 1)[1] in _NORM_SUFFIXES:
        return prefix + "shortcut.normalization." + rest.rsplit(".", 1)[1]
    raise KeyError(f"Unexpected torchvision ResNet weight {key!r}")


def convert_torchvision_resnet_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision ResNet weight names -> transformers `ResNetModel` weight names (the `fc` head is dropped)."""
    converted = {}
    for key, value in state_dict.items():
        new_key = _rename(key)
        if new_key is not None:
            converted[new_key] = value
    return converted


def load_torchvision_resnet(arch: str, weights_path: str | None = None) -> ResNetModel:
    """A transformers `ResNetModel` holding torchvision's `arch` weights.

    With `weights_path`, the state dict saved there (`torch.save(resnet.state_dict(), path)`) is used; otherwise
    torchvision's default ImageNet weights (downloaded by torchvision on first use).
    """
    config = torchvision_resnet_config(arch)
    if weights_path is not None:
        state_dict = torch.load(weights_path, map_location="cpu", weights_only=True)
    elif is_torchvision_available():
        import torchvision

        state_dict = torchvision.models.get_model(arch, weights="DEFAULT").state_dict()
    else:
        raise ImportError(f"Loading torchvision's pretrained {arch} needs torchvision: pip install torchvision")
    model = ResNetModel(config)
    model.load_state_dict(convert_torchvision_resnet_state_dict(state_dict), strict=True)
    return model.eval()


__all__ = [
    "TORCHVISION_PREFIX",
    "torchvision_architecture",
    "TORCHVISION_RESNETS",
    "convert_torchvision_resnet_state_dict",
    "load_torchvision_resnet",
    "torchvision_resnet_config",
]
