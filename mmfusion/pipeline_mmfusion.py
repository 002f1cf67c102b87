"""The `image-text-classification` pipeline: `pipeline("image-text-classification", model=..., trust_remote_code=True)`.

This file is copied next to every checkpoint (remote code, like `modeling_mmfusion.py`), so it imports only
transformers, torch, numpy and PIL, never the `mmfusion` package itself. `save_pipeline_code(folder)` puts it beside
a saved checkpoint and registers it in the folder's `config.json` (`custom_pipelines`), which is what transformers'
`pipeline(...)` reads.

```python
from transformers import pipeline

classify = pipeline("image-text-classification", model="outputs/demo-early-fusion", trust_remote_code=True)
classify({"image": "meme.png", "text": "look how many people love you"})  # [{"label": ..., "score": ...}, ...]
classify([{"image": img1, "text": t1}, {"image": img2, "text": t2}], batch_size=16, top_k=1)
```
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from transformers import AutoModelForSequenceClassification, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY

from .decisions import check_decision_threshold, check_temperature, decide, decision_order, is_multi_label
from .explanations import DEFAULT_STEPS, explain_pairs

TASK = "image-text-classification"


class ImageTextClassificationPipeline(Pipeline):
    """Classify (image, caption) pairs with an mmfusion checkpoint.

    Inputs: `{"image": ..., "text": ...}` or a list of them (or any iterable, e.g. a `KeyDataset`); an image is a
    local path, an http(s) URL, encoded bytes or a PIL image, in any mode (converted to RGB by the processor, the same
    way as at training time). `"text"` may be missing or `None` (an empty caption).

    Call options:
        top_k (`int`, *optional*): how many labels to return per pair, best first; default (`None`): all of them.
        function_to_apply (`str`, *optional*): `"softmax"`, `"sigmoid"` or `"none"`; default: sigmoid for
            multi-label checkpoints, softmax otherwise.
        timeout (`float`, *optional*): seconds to wait for an image URL.
        threshold (`float` or `list[float]`, *optional*): the decision threshold for this call, instead of the
            checkpoint's `config.decision_threshold` (see `decisions.py`); in [0, 1]. Multi-label: one per label,
            or one for every label.
        temperature (`float`, *optional*): instead of the checkpoint's `config.calibration_temperature` (1.0: raw softmax).
        explain (`bool`, *optional*): also explain the decision (`explanations.py`, plain torch autograd, nothing more
            to install): each pair's result becomes `{"labels": [...], "explanation": Explanation}`, the explanation
            holding the caption words' Integrated Gradients attributions and the image's Grad-CAM heat map
            (`.heatmap_image(width, height)`; `.to_dict()` for JSON). The same as `MMFusionPredictor.explain`.
        explain_steps (`int`, *optional*): Integrated Gradients path points (default 64).
        neighbors (`int`, *optional*): also return the pair's `neighbors` nearest labelled examples of the
            checkpoint's memory (`memory.safetensors`, see `memory.py`): each pair's result becomes `{"labels": [...],
            "neighbors": [{"id", "label", "similarity", "caption", "image"}, ...]}`, best first.

    A checkpoint with a labelled memory scores by its `config.prediction_mode` (`head`, `knn` or `mix`, see
    `memory.py`), as `MMFusionPredictor` does; `function_to_apply="none"` returns the head's raw logits.

    Returns one list of `{"label", "score"}` dicts per pair (a list of such lists for a list of pairs); the scores are
    the class probabilities `mmfusion.inference.MMFusionPredictor` returns (the checkpoint's temperature applied). The
    first entry is the decision: the most probable class, or with a decision threshold the class it decides (then
    the rest by score).

    Multi-label checkpoints (`config.problem_type == "multi_label_classification"`): the scores are per-label
    sigmoids, and each entry also says whether its label is predicted, `{"label", "score", "selected"}`:
    `selected` is true for every label at or above its threshold (the checkpoint's per-label
    `decision_threshold`, 0.5 without one). The selected labels come first, then the others, each group by score;
    `[e["label"] for e in result if e["selected"]]` is the predicted label set (possibly empty).
    """

    _load_processor = True
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False

    def _sanitize_parameters(
        self,
        top_k=None,
        function_to_apply=None,
        timeout=None,
        threshold=None,
        temperature=None,
        explain=None,
        explain_steps=None,
        neighbors=None,
        **kwargs,
    ):
        if kwargs:
            raise TypeError(f"{type(self).__name__} got unexpected options: {', '.join(kwargs)}")
        preprocess_params = {"timeout": timeout} if timeout is not None else {}
        postprocess_params = {"top_k": top_k}
        if threshold is not None:
            postprocess_params["threshold"] = check_decision_threshold(
                threshold, len(self.model.config.id2label), multi_label=is_multi_label(self.model.config)
            )
        if temperature is not None:
            postprocess_params["temperature"] = check_temperature(temperature)
        if function_to_apply is not None:
            if function_to_apply not in ("softmax", "sigmoid", "none"):
                raise ValueError(f"function_to_apply must be softmax, sigmoid or none, got {function_to_apply!r}")
            postprocess_params["function_to_apply"] = function_to_apply
        forward_params = {}
        if neighbors:
            if isinstance(neighbors, bool) or int(neighbors) != neighbors or neighbors < 1:
                raise ValueError(f"neighbors must be a whole number >= 1; got {neighbors!r}.")
            if getattr(self.model, "memory", None) is None:
                raise ValueError("neighbors: this checkpoint has no labelled memory (memory.safetensors).")
            postprocess_params["neighbors"] = int(neighbors)
        if explain:  # the class explained is the one decided, with this call's threshold and temperature
            preprocess_params["explain"] = True
            forward_params = {"explain": True, "explain_steps": int(explain_steps or DEFAULT_STEPS)}
            forward_params.update({k: v for k, v in postprocess_params.items() if k in ("threshold", "temperature")})
        return preprocess_params, forward_params, postprocess_params

    def __call__(self, inputs, **kwargs):
        """Classify one `{"image", "text"}` pair or a list of them (see the class docstring)."""
        return super().__call__(inputs, **kwargs)

    def preprocess(self, inputs, timeout=None, explain=False):
        if not isinstance(inputs, dict) or "image" not in inputs:
            raise ValueError(
                f"{TASK} takes a dict {{'image': ..., 'text': ...}} or a list of them; got {type(inputs).__name__}"
            )
        image = load_image(inputs["image"], timeout=timeout)
        text = inputs.get("text")
        model_inputs = self.processor(images=[image], text=["" if text is None else str(text)], return_tensors="pt")
        if explain:
            model_inputs = {**model_inputs, "_explain_pair": (image, text)}
        return model_inputs

    def _forward(self, model_inputs, explain=False, explain_steps=DEFAULT_STEPS, threshold=None, temperature=None):
        model_inputs = dict(model_inputs)
        pairs = model_inputs.pop("_explain_pair", None)
        outputs = self.model(**model_inputs)
        logits = outputs.logits
        # The embeddings travel with the logits: the prediction mode and the neighbours read them.
        found = {"logits": logits, "embeddings": torch.nn.functional.normalize(outputs.embeddings.float(), dim=-1)}
        if not explain:
            return found
        batched = isinstance(pairs, list)  # with batch_size > 1 the collator lists the batch's pairs
        pairs = pairs if batched else [pairs]
        config = self.model.config
        if temperature is None:
            temperature = check_temperature(getattr(config, "calibration_temperature", 1.0))
        if threshold is None:
            threshold = getattr(config, "decision_threshold", None)
        scaled = logits.float().cpu().numpy().astype(np.float64) / temperature
        if getattr(config, "problem_type", None) == "multi_label_classification":
            probabilities = 1.0 / (1.0 + np.exp(-scaled))
        else:
            exponentials = np.exp(scaled - scaled.max(axis=-1, keepdims=True))
            probabilities = exponentials / exponentials.sum(axis=-1, keepdims=True)
        probabilities = self.model.memory_probabilities(probabilities, found["embeddings"].cpu().numpy())
        explanations = explain_pairs(
            self.model,
            self.processor,
            [image for image, _ in pairs],
            [text for _, text in pairs],
            targets=[int(target) for target in decide(probabilities, threshold)],
            temperature=temperature,
            steps=explain_steps,
        )
        return {**found, "explanation": explanations if batched else explanations[0]}

    def postprocess(
        self, model_outputs, top_k=None, function_to_apply=None, threshold=None, temperature=None, neighbors=None
    ):
        # float64 numpy, as MMFusionPredictor computes its probabilities: the two give the same scores
        config = self.model.config
        if temperature is None:
            temperature = check_temperature(getattr(config, "calibration_temperature", 1.0))
        if threshold is None:
            threshold = getattr(config, "decision_threshold", None)
        logits = model_outputs["logits"][0].float().cpu().numpy().astype(np.float64)
        multi_label = is_multi_label(config)
        if function_to_apply is None:
            function_to_apply = "sigmoid" if multi_label else "softmax"
        if function_to_apply != "none":
            logits = logits / temperature
        if function_to_apply == "sigmoid":
            scores = 1.0 / (1.0 + np.exp(-logits))
        elif function_to_apply == "softmax":
            exponentials = np.exp(logits - logits.max())
            scores = exponentials / exponentials.sum()
        else:
            scores = logits
        embeddings = model_outputs["embeddings"][0].float().cpu().numpy()[None, :]
        if function_to_apply != "none":  # the checkpoint's prediction mode: head, kNN over its memory, or a mix
            scores = np.asarray(self.model.memory_probabilities(scores[None, :], embeddings), dtype=np.float64)[0]
        nearest = self.model.memory.neighbors(embeddings, neighbors)[0] if neighbors else None
        id2label = {int(index): name for index, name in self.model.config.id2label.items()}
        if multi_label and function_to_apply == "sigmoid":
            selected = decide(scores, threshold, multi_label=True)
            ranked = decision_order(scores, threshold, multi_label=True)
            if top_k is not None:
                ranked = ranked[: max(int(top_k), 0)]
            labels = [
                {"label": id2label[index], "score": float(scores[index]), "selected": bool(selected[index])}
                for index in ranked
            ]
            return {"labels": labels, "neighbors": nearest} if nearest is not None else labels
        if function_to_apply == "none":
            ranked = sorted(range(len(scores)), key=lambda index: -scores[index])
        else:
            ranked = decision_order(scores, threshold)
        if top_k is not None:
            ranked = ranked[: max(int(top_k), 0)]
        labels = [{"label": id2label[index], "score": float(scores[index])} for index in ranked]
        extras = {}
        if "explanation" in model_outputs:
            extras["explanation"] = model_outputs["explanation"]
        if nearest is not None:
            extras["neighbors"] = nearest
        return {"labels": labels, **extras} if extras else labels


def load_image(image, timeout: float | None = None) -> Image.Image:
    """A PIL image (EXIF rotation applied, mode kept: the processor converts it) from a path, URL, bytes or PIL."""
    if isinstance(image, Image.Image):
        opened = image
    elif isinstance(image, (bytes, bytearray)):
        opened = _open(io.BytesIO(bytes(image)), "the image bytes")
    elif isinstance(image, (str, os.PathLike)):
        source = os.fspath(image)
        if source.startswith(("http://", "https://")):
            import httpx

            response = httpx.get(source, timeout=timeout if timeout is not None else 30, follow_redirects=True)
            response.raise_for_status()
            opened = _open(io.BytesIO(response.content), source)
        elif os.path.isfile(source):
            opened = _open(source, source)
        else:
            raise FileNotFoundError(f"image file not found: {source}")
    else:
        raise TypeError(f"image must be a path, a URL, bytes or a PIL image; got {type(image).__name__}")
    return ImageOps.exif_transpose(opened)


def _open(fp, name: str) -> Image.Image:
    try:
        image = Image.open(fp)
        image.load()  # decode now, so a corrupt file fails here with its name
    except (OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"cannot read image {name}: {error}") from error
    return image


def custom_pipelines_entry() -> dict:
    """The `custom_pipelines` value of `config.json`, in the form `Pipeline.save_pretrained` writes it."""
    return {
        TASK: {
            "impl": f"{Path(__file__).stem}.{ImageTextClassificationPipeline.__name__}",
            "pt": [AutoModelForSequenceClassification.__name__],
            "type": "multimodal",
        }
    }


def save_pipeline_code(save_directory: str | os.PathLike) -> Path:
    """Make a saved checkpoint folder a pipeline: copy this file beside the model code and register it in config.json.

    Call it after `model.save_pretrained(save_directory)` (and the processor's); returns the copied file's path.
    Equivalent to `Pipeline.save_pretrained` of this pipeline, without saving the weights again.
    """
    from transformers.dynamic_module_utils import custom_object_save

    folder = Path(save_directory)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: save the model to {folder} first")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["custom_pipelines"] = {**(config.get("custom_pipelines") or {}), **custom_pipelines_entry()}
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    (copied,) = custom_object_save(ImageTextClassificationPipeline, folder)[:1]
    return Path(copied)


# Registered once per process: a checkpoint's copy of this file, loaded as remote code, finds the task known already
# (transformers then takes the class named in the checkpoint's config.json anyway).
if TASK not in PIPELINE_REGISTRY.get_supported_tasks():
    PIPELINE_REGISTRY.register_pipeline(
        TASK,
        pipeline_class=ImageTextClassificationPipeline,
        pt_model=AutoModelForSequenceClassification,
        type="multimodal",
    )

__all__ = ["ImageTextClassificationPipeline", "TASK", "custom_pipelines_entry", "load_image", "save_pipeline_code"]
