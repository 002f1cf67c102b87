"""Inference and deployment for mmfusion checkpoints.

- `MMFusionPredictor`: classify pairs, batches and whole files on PyTorch or ONNX Runtime;
- `predict(...)`: the same in one call (`mmfusion-predict` on the command line);
- `export_onnx(...)` / `quantize_int8(...)` / `quantize_int8_static(...)`: `model.onnx` (+ `model_int8.onnx`, dynamic
  or static int8) with processor files
  (`mmfusion-export` on the command line);
- `modality_report(...)`: which modality drove a decision (the demo app's explanation).

Note: `mmfusion.inference.predict` is the convenience *function*; the command-line module of the same name is
`mmfusion/inference/predict.py` (`python -m mmfusion.inference.predict`).
"""

import warnings

from ..evaluation.predictions import FilePredictions, Predictions
from .backends import INT8_ONNX_FILENAME, ONNX_FILENAME, OnnxBackend, TorchBackend
from .export import ExportInfo, export_onnx
from .images import ImageCheckError, load_image
from .modality import ModalityReport, modality_report
from .predict import predict
from .predictor import MMFusionPredictor
from .quantization import quantize_int8, quantize_int8_static

# `python -m mmfusion.inference.predict` (the form `accelerate launch -m` needs) imports this package, which imports
# the module for the `predict` function, before running the module as __main__; runpy then warns that the module ran
# twice. Running twice is harmless for it (definitions only), so that one warning is not shown.
warnings.filterwarnings(
    "ignore", message=r"'mmfusion\.inference\.predict' found in sys\.modules", category=RuntimeWarning
)

__all__ = [
    "ExportInfo",
    "FilePredictions",
    "INT8_ONNX_FILENAME",
    "ImageCheckError",
    "MMFusionPredictor",
    "ModalityReport",
    "ONNX_FILENAME",
    "OnnxBackend",
    "Predictions",
    "TorchBackend",
    "export_onnx",
    "load_image",
    "modality_report",
    "predict",
    "quantize_int8",
    "quantize_int8_static",
]
