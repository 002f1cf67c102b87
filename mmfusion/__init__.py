"""mmfusion: Hugging Face-native image+text classification.

Importing the package registers the mmfusion classes with transformers' Auto classes, so
`AutoConfig`/`AutoModel`/`AutoModelForSequenceClassification`/`AutoProcessor` resolve `model_type="mmfusion"`
without `trust_remote_code`. Saved checkpoints also carry the model code, for users who only have transformers.
"""

from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoProcessor

from .configuration_mmfusion import MMFusionConfig
from .fusions import FUSIONS, EmbeddingFusion, Fusion, FusionInputs, FusionSetting, TokenFusion
from .modeling_mmfusion import (
    MMFusionClassifierOutput,
    MMFusionForClassification,
    MMFusionModel,
    MMFusionModelOutput,
    MMFusionPreTrainedModel,
)
from .processing_mmfusion import MMFusionProcessor, default_image_processor, to_rgb
from .torchvision_resnet import load_torchvision_resnet, torchvision_resnet_config

AutoConfig.register(MMFusionConfig.model_type, MMFusionConfig, exist_ok=True)
AutoModel.register(MMFusionConfig, MMFusionModel, exist_ok=True)
AutoModelForSequenceClassification.register(MMFusionConfig, MMFusionForClassification, exist_ok=True)
AutoProcessor.register(MMFusionConfig, MMFusionProcessor, exist_ok=True)

__all__ = [
    "FUSIONS",
    "EmbeddingFusion",
    "Fusion",
    "FusionInputs",
    "FusionSetting",
    "MMFusionClassifierOutput",
    "MMFusionConfig",
    "MMFusionForClassification",
    "MMFusionModel",
    "MMFusionModelOutput",
    "MMFusionPreTrainedModel",
    "MMFusionProcessor",
    "TokenFusion",
    "default_image_processor",
    "load_torchvision_resnet",
    "to_rgb",
    "torchvision_resnet_config",
]
