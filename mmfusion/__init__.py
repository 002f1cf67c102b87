"""mmfusion: Hugging Face-native image+text classification."""

from .processing_mmfusion import MMFusionProcessor, default_image_processor, to_rgb

__all__ = ["MMFusionProcessor", "default_image_processor", "to_rgb"]
