"""The two engines a predictor can run on: PyTorch (the checkpoint itself) and ONNX Runtime (an exported folder).

Both take the processor's output and return logits as a float32 numpy array, so everything around them (batching,
softmax, label names, files) is shared.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

ONNX_FILENAME = "model.onnx"
INT8_ONNX_FILENAME = "model_int8.onnx"
EXPORT_INFO_FILENAME = "onnx_export.json"  # what was exported, how, for which CPU (`ExportInfo`)
BACKENDS = ("torch", "onnx")
# The exported graph's second output: the classifier's input (what the labelled memory's rows were embedded as).
EMBEDDINGS_OUTPUT = "embeddings"
# What the exported graphs take; the processor may produce more (nothing else today), which is left out.
MODEL_INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids", "pixel_values")


class InferenceBackend(Protocol):
    """Runs the classifier on processor outputs."""

    #: what the processor should return: `"pt"` (torch tensors) or `"np"` (numpy arrays)
    return_tensors: str

    def logits(self, inputs: Mapping[str, Any]) -> np.ndarray:
        """`(batch_size, num_labels)` float32 logits for a processed batch."""
        ...

    def logits_and_embeddings(self, inputs: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """The logits and the L2-normalised embeddings (`MMFusionForClassification.embed`) of a processed batch."""
        ...


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class TorchBackend:
    """An `MMFusionForClassification` in eval mode on one device.

    Args:
        model (`MMFusionForClassification`):
            The model; put in eval mode and moved to `device` here.
        device (`str`, *optional*):
            `"cpu"`, `"cuda"`, `"cuda:1"`... Default: CUDA when available, else CPU.
    """

    return_tensors = "pt"

    def __init__(self, model, device: str | None = None):
        self.device = device or default_device()
        self.model = model.to(self.device).eval()

    @classmethod
    def from_pretrained(cls, path_or_hub_id: str | os.PathLike, device: str | None = None, **model_kwargs):
        """Load the checkpoint with `AutoModelForSequenceClassification` (remote code allowed: a Hub checkpoint
        carries its own model code)."""
        from transformers import AutoModelForSequenceClassification

        model_kwargs.setdefault("trust_remote_code", True)
        model = AutoModelForSequenceClassification.from_pretrained(os.fspath(path_or_hub_id), **model_kwargs)
        return cls(model, device)

    @property
    def config(self):
        return self.model.config

    def logits(self, inputs: Mapping[str, Any]) -> np.ndarray:
        import torch

        names = MODEL_INPUT_NAMES
        if getattr(self.model.config, "vision_language_config", None) is not None:
            names = tuple(inputs)  # a joint model's processor adds the VLM's own inputs (Qwen2-VL's image_grid_thw)
        model_inputs = {name: inputs[name].to(self.device) for name in names if name in inputs}
        with torch.inference_mode():
            logits = self.model(**model_inputs).logits
        return logits.float().cpu().numpy()

    def logits_and_embeddings(self, inputs: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        import torch
        import torch.nn.functional as F

        model_inputs = {name: inputs[name].to(self.device) for name in MODEL_INPUT_NAMES if name in inputs}
        with torch.inference_mode():
            outputs = self.model(**model_inputs)
        embeddings = F.normalize(outputs.embeddings.float(), dim=-1)
        return outputs.logits.float().cpu().numpy(), embeddings.cpu().numpy()


class OnnxBackend:
    """An exported `model.onnx` (or its int8 version) in an ONNX Runtime session.

    Inputs are fed by name, cast to the types the graph declares; `token_type_ids` are zeros when the graph wants them
    and the processor did not make them (BERT's default).

    Args:
        model_path (`str` or `os.PathLike`):
            The `.onnx` file.
        device (`str`, *optional*):
            `"cuda"` uses ONNX Runtime's CUDA provider when the installed build has it; anything else runs on CPU.
        providers (`list[str]`, *optional*):
            Explicit ONNX Runtime execution providers (overrides `device`).
        session_options (`onnxruntime.SessionOptions`, *optional*):
            Threads, graph optimisation level, ... Default: `default_session_options()` (no spinning between calls).
    """

    return_tensors = "np"

    def __init__(
        self,
        model_path: str | os.PathLike,
        device: str | None = None,
        providers: Sequence[str] | None = None,
        session_options=None,
    ):
        import onnxruntime as ort

        model_path = Path(model_path)
        if not model_path.is_file():
            raise FileNotFoundError(
                f"No ONNX model at {model_path}. Export the checkpoint first: mmfusion-export CHECKPOINT OUTPUT_DIR"
            )
        if providers is None:
            providers = ["CPUExecutionProvider"]
            if device is not None and device.startswith("cuda"):
                if "CUDAExecutionProvider" not in ort.get_available_providers():
                    raise ValueError("device='cuda' needs onnxruntime-gpu (CUDAExecutionProvider is not available).")
                providers.insert(0, "CUDAExecutionProvider")
        self.model_path = model_path
        self.session = ort.InferenceSession(
            os.fspath(model_path), sess_options=session_options or default_session_options(), providers=providers
        )
        self._input_types = {node.name: _numpy_type(node.type) for node in self.session.get_inputs()}
        self._output_name = self.session.get_outputs()[0].name
        self.output_names = [node.name for node in self.session.get_outputs()]

    @property
    def input_names(self) -> list[str]:
        return list(self._input_types)

    def logits(self, inputs: Mapping[str, Any]) -> np.ndarray:
        (logits,) = self.session.run([self._output_name], self._feed(inputs))
        return logits.astype(np.float32, copy=False)

    def logits_and_embeddings(self, inputs: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        if EMBEDDINGS_OUTPUT not in self.output_names:
            raise ValueError(
                f"{self.model_path} has no {EMBEDDINGS_OUTPUT!r} output (exported before the labelled memory was): "
                "export the checkpoint again with mmfusion-export for kNN predictions and neighbours."
            )
        logits, embeddings = self.session.run([self._output_name, EMBEDDINGS_OUTPUT], self._feed(inputs))
        embeddings = embeddings.astype(np.float32, copy=False)
        norms = np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)  # as F.normalize
        return logits.astype(np.float32, copy=False), embeddings / norms

    def _feed(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        feed = {}
        for name, dtype in self._input_types.items():
            if name in inputs:
                feed[name] = np.asarray(inputs[name], dtype=dtype)
            elif name == "token_type_ids":
                feed[name] = np.zeros_like(np.asarray(inputs["input_ids"]), dtype=dtype)
            else:
                raise KeyError(f"The ONNX model needs input {name!r}, which the processor did not produce.")
        return feed


def default_session_options(threads: int | None = None):
    """ONNX Runtime session options for the predictor: worker threads sleep between calls instead of spinning.

    By default ONNX Runtime's worker threads keep spinning for a while after every `run`, which is free when calls
    come back to back but takes the CPU away from what a predictor does between them (decoding and preprocessing
    images, on the same cores). Measured on the 2-core benchmark machine: batch-1 latency 84 ms end-to-end without
    spinning, 138 ms with it.

    Args:
        threads (`int`, *optional*):
            Intra-op threads; default: ONNX Runtime's (one per physical core).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads is not None:
        options.intra_op_num_threads = threads
    return options


def _numpy_type(onnx_type: str):
    """ONNX Runtime's type string (`"tensor(int64)"`) -> numpy dtype."""
    return {
        "tensor(int64)": np.int64,
        "tensor(int32)": np.int32,
        "tensor(float)": np.float32,
        "tensor(float16)": np.float16,
        "tensor(double)": np.float64,
        "tensor(bool)": np.bool_,
    }[onnx_type]


def resolve_model_folder(path_or_hub_id: str | os.PathLike) -> Path:
    """A local folder as is; anything else is taken for a Hub repository id and downloaded (cached) as a snapshot.

    The PyTorch backend leaves this to `from_pretrained`; ONNX Runtime needs files on disk.
    """
    path = Path(os.fspath(path_or_hub_id)).expanduser()
    if path.is_dir():
        return path
    if path.exists() or path.suffix == ".onnx":
        raise ValueError(f"{path} is a file; pass the folder that holds the .onnx file, config and processor files.")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(os.fspath(path_or_hub_id)))
    except Exception as error:  # network, validation and "repository not found" errors alike
        raise FileNotFoundError(
            f"{path_or_hub_id} is neither a local folder nor a Hub repository that could be downloaded ({error})."
        ) from error
