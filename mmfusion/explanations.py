"""Explanations of a prediction: how much each caption token and each image region moved the decided class's score.

Copied next to every checkpoint (remote code, imported by the pipeline), so it imports only torch and numpy (the
model and processor come from the caller), never the `mmfusion` package itself; the predictor, `mmfusion-predict
--explain`, the app, the report and `pipeline(..., explain=True)` all call `explain_pairs` here, so every path gives
the same explanation. Plain autograd, no captum: the tests check the caption attributions against captum's
`LayerIntegratedGradients` (same numbers) and the image maps against a direct Grad-CAM.

- **Caption: Integrated Gradients** (Sundararajan et al. 2017) on the text tower's word embeddings (the output of
  `get_input_embeddings()`, so position and token-type embeddings stay as they are). The baseline is the caption
  with every word piece replaced by the padding token ([CLS]/[SEP]-like special tokens kept). What is explained is
  the class's log-odds, `log(p / (1 - p))` of its calibrated probability: the gradient along the straight path from
  the baseline to the caption is averaged over points of the path, and a token's attribution is the sum over the
  embedding of `(x - x')` times that average gradient. They add up to `log_odds(caption) - log_odds(baseline)` up to
  the quadrature's error (`text_delta` reports the gap). A trained model's log-odds can step by several units within
  a few hundredths of the path (the demo model's: 12 units between 0.30 and 0.35), which equally spaced points
  straddle, so the points go where it changes: the log-odds is first computed at `steps + 1` equally spaced points
  (no gradients), then each of the `steps` intervals gets its midpoint plus a share of `steps` more in proportion to
  its change (`adaptive=False`: `steps` equally spaced midpoints, captum's `riemann_middle`).
  Positive: the token pushed towards the explained class.
- **Image: Grad-CAM** (Selvaraju et al. 2017) on the vision tower's last feature map: a CNN's (B, C, H, W) last
  stage, or a ViT/CLIP/SigLIP tower's last hidden state (B, N, C) with the patch tokens reshaped to their grid (a
  leading [CLS] and any other extra tokens dropped). Channel weights are the spatially averaged gradients of the
  class's logit (as in the paper: a confident probability's gradient vanishes); the map
  is ReLU of the weighted sum, scaled so that its maximum is 1 (all zeros when nothing in the image pushed towards
  the class).

The class's score is its calibrated probability (softmax of `logits / temperature`; sigmoid for multi-label
checkpoints, whose log-odds are the scaled logit); the class is the one decided (`targets=None`: argmax), or any class the caller names. Frozen towers are
differentiated too (their weights get no gradient; the model is left as it was).
"""

from __future__ import annotations

import math
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_STEPS = 32


@dataclass
class Explanation:
    """The explanation of one (image, caption) pair for one class.

    Attributes:
        label, label_id: the explained class (the decided one unless another was asked for).
        score: its probability for the pair (what the attributions explain).
        words, word_attributions: the caption's whitespace-separated words and their Integrated Gradients
            attributions (the sum of their word pieces'); empty for the image-only baseline.
        tokens, token_attributions: the same per word piece (special tokens and padding left out).
        log_odds, baseline_log_odds: the log-odds of `score` and `baseline_score` (what the attributions explain).
        baseline_score: the class's probability with every word piece replaced by padding (same image).
        text_delta: `sum(token_attributions) - (log_odds - baseline_log_odds)`: the quadrature's error (small is
            good).
        heatmap: Grad-CAM over the vision tower's feature grid, (rows, columns) in [0, 1]; None without a vision
            tower. `heatmap_image(width, height)` upsamples it to an image's size.
    """

    label: str
    label_id: int
    score: float
    words: list[str] = field(default_factory=list)
    word_attributions: list[float] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    token_attributions: list[float] = field(default_factory=list)
    baseline_score: float | None = None
    log_odds: float | None = None
    baseline_log_odds: float | None = None
    text_delta: float | None = None
    heatmap: np.ndarray | None = None

    def heatmap_image(self, width: int, height: int) -> np.ndarray | None:
        """The heat map bilinearly upsampled to `(height, width)`, values in [0, 1]."""
        if self.heatmap is None:
            return None
        grid = torch.as_tensor(self.heatmap, dtype=torch.float32)[None, None]
        resized = F.interpolate(grid, size=(int(height), int(width)), mode="bilinear", align_corners=False)
        return resized[0, 0].clamp(0, 1).numpy()

    def top_words(self, k: int = 3) -> list[str]:
        """The `k` words with the largest attribution magnitude, largest first."""
        order = sorted(range(len(self.words)), key=lambda i: -abs(self.word_attributions[i]))
        return [self.words[i] for i in order[:k]]

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly (the heat map as nested lists)."""
        return {
            "label": self.label,
            "label_id": self.label_id,
            "score": self.score,
            "words": list(self.words),
            "word_attributions": list(self.word_attributions),
            "tokens": list(self.tokens),
            "token_attributions": list(self.token_attributions),
            "baseline_score": self.baseline_score,
            "log_odds": self.log_odds,
            "baseline_log_odds": self.baseline_log_odds,
            "text_delta": self.text_delta,
            "heatmap": None if self.heatmap is None else np.round(self.heatmap, 6).tolist(),
        }


def _towers(model):
    """The base model holding the towers and the fusion (`model.mmfusion`), whatever module it was loaded as."""
    return getattr(model, getattr(model, "base_model_prefix", ""), None) or model


def _leave_inference_mode(model) -> None:
    """Weights or buffers written under `torch.inference_mode()` (e.g. a checkpoint reloaded inside it) cannot take
    part in autograd: replace them by ordinary copies (same values; done once, nothing else changes)."""
    with torch.no_grad():
        for module in model.modules():
            for parameter in module.parameters(recurse=False):
                if parameter.is_inference():
                    parameter.data = parameter.data.clone()
            for name, buffer in module.named_buffers(recurse=False):
                if buffer is not None and buffer.is_inference():
                    module._buffers[name] = buffer.clone()


@contextmanager
def _differentiable_towers(model):
    """Let gradients flow through frozen towers (their forward otherwise runs without autograd); eval mode."""
    _leave_inference_mode(model)
    configs = {id(config): config for config in (model.config, _towers(model).config)}.values()
    saved = [(config, config.freeze_text_encoder, config.freeze_vision_encoder) for config in configs]
    was_training = model.training
    model.eval()
    try:
        for config, _, _ in saved:
            config.freeze_text_encoder = config.freeze_vision_encoder = False
        yield
    finally:
        for config, text, vision in saved:
            config.freeze_text_encoder, config.freeze_vision_encoder = text, vision
        model.train(was_training)


def class_log_odds(logits: torch.Tensor, targets: torch.Tensor, config, temperature: float = 1.0) -> torch.Tensor:
    """The log-odds of each row's target class, `log(p / (1 - p))` of its calibrated probability, computed from the
    logits without rounding: what Integrated Gradients explains. A confident probability jumps from near 0 to near 1
    over a short stretch of the path, which a sum over a few dozen points misses; its log-odds changes smoothly."""
    logits = logits.float() / temperature
    chosen = logits.gather(1, targets[:, None])[:, 0]
    if getattr(config, "problem_type", None) == "multi_label_classification":
        return chosen
    others = logits.scatter(1, targets[:, None], float("-inf"))
    return chosen - torch.logsumexp(others, dim=1)


def class_scores(logits: torch.Tensor, config, temperature: float = 1.0) -> torch.Tensor:
    """Calibrated class probabilities: softmax of `logits / temperature`, sigmoid for multi-label checkpoints."""
    logits = logits.float() / temperature
    if getattr(config, "problem_type", None) == "multi_label_classification":
        return torch.sigmoid(logits)
    return logits.softmax(-1)


def grad_cam(features: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """Grad-CAM maps (B, rows, columns) in [0, 1] from a feature map and the score's gradient with respect to it.

    `features`: (B, C, H, W) (a CNN's last stage) or (B, N, C) tokens, of which the last `side**2` (the largest
    square) are the patch grid, row-major (ViT, CLIP and SigLIP towers; a leading [CLS] is dropped).
    """
    if features.dim() == 4:
        weights = gradients.mean(dim=(2, 3), keepdim=True)
        cam = (weights * features).sum(dim=1)
    elif features.dim() == 3:
        side = math.isqrt(features.shape[1])
        extra = features.shape[1] - side * side
        patches, patch_gradients = features[:, extra:], gradients[:, extra:]
        weights = patch_gradients.mean(dim=1, keepdim=True)
        cam = (weights * patches).sum(dim=-1).reshape(features.shape[0], side, side)
    else:
        raise ValueError(f"Grad-CAM needs (B, C, H, W) or (B, N, C) features, got shape {tuple(features.shape)}")
    cam = cam.float().clamp(min=0)
    peak = cam.flatten(1).amax(dim=1).clamp(min=1e-12).view(-1, 1, 1)
    return cam / peak


def path_points(steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Where on the straight path from the baseline (0) to the input (1) the gradient is taken, and each point's weight
    (summing to 1): the midpoints of `steps` equal intervals (captum's `riemann_middle`). Gauss-Legendre (captum's
    default) converges faster on smooth paths but worse on a confident model's probability, which jumps."""
    return (np.arange(steps) + 0.5) / steps, np.full(steps, 1.0 / steps)


def baseline_input_ids(input_ids: torch.Tensor, attention_mask: torch.Tensor, tokenizer, config) -> torch.Tensor:
    """The Integrated Gradients baseline: every real, non-special token replaced by the padding token."""
    pad_id = getattr(tokenizer, "pad_token_id", None)
    if pad_id is None:
        pad_id = getattr(getattr(config, "text_config", None), "pad_token_id", None) or 0
    special = torch.tensor(sorted(set(getattr(tokenizer, "all_special_ids", []) or [])), dtype=input_ids.dtype)
    is_special = torch.isin(input_ids, special.to(input_ids.device))
    replace = attention_mask.bool() & ~is_special
    return torch.where(replace, torch.full_like(input_ids, pad_id), input_ids)


def explain_pairs(
    model,
    processor,
    images,
    texts,
    *,
    targets=None,
    temperature: float = 1.0,
    steps: int = DEFAULT_STEPS,
    batch_size: int = 64,
    adaptive: bool = True,
) -> list[Explanation]:
    """Explain the model's score for each pair `(images[i], texts[i])` (see the module docstring).

    Args:
        model: an mmfusion `...ForClassification` (loaded with mmfusion or as remote code).
        processor: its processor (tokenizer + image processor).
        images: PIL images (RGB or any mode the processor converts); ignored by the text-only baseline.
        texts: the captions (`None` for none).
        targets: the class id to explain per pair; default: the most probable class.
        temperature: the calibration temperature the scores are computed with.
        steps: points on the Integrated Gradients path (more: smaller `text_delta`).
        batch_size: rows per model call on the path.
        adaptive: place the path points where the log-odds changes (see below); False: `steps` equally spaced
            midpoints, exactly captum's `riemann_middle`.
    """
    texts = ["" if text is None else str(text) for text in texts]
    if len(images) != len(texts):
        raise ValueError(f"Got {len(images)} images but {len(texts)} captions.")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    towers = _towers(model)
    fusion = towers.fusion
    device = next(model.parameters()).device
    has_text, has_image = towers.text_model is not None, towers.vision_model is not None
    inputs = processor(images=list(images) if has_image else None, text=texts, return_tensors="pt")
    model_inputs = {
        name: inputs[name].to(device)
        for name in ("input_ids", "attention_mask", "token_type_ids", "pixel_values")
        if name in inputs and (has_image or name != "pixel_values")
    }
    if has_text and "attention_mask" not in model_inputs:  # a tokenizer that returns none: every token is real
        model_inputs["attention_mask"] = torch.ones_like(model_inputs["input_ids"])
    id2label = {int(index): name for index, name in model.config.id2label.items()}

    with _differentiable_towers(model), torch.enable_grad():
        # 1. The pair as it is: the scores, and Grad-CAM on the vision tower's last feature map.
        captured = {}
        handle = None
        if has_image:
            model_inputs["pixel_values"] = model_inputs["pixel_values"].detach().requires_grad_(True)

            def keep_features(module, args, output):
                captured["features"] = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]

            handle = towers.vision_model.register_forward_hook(keep_features)
        try:
            logits = model(**model_inputs).logits
        finally:
            if handle is not None:
                handle.remove()
        scores = class_scores(logits, model.config, temperature)
        if targets is None:
            targets = scores.argmax(-1)
        targets = torch.as_tensor(targets, dtype=torch.long, device=device).reshape(-1)
        target_scores = scores.gather(1, targets[:, None])[:, 0]
        target_log_odds = class_log_odds(logits.detach(), targets, model.config, temperature)
        heatmaps = [None] * len(texts)
        image_kwargs = {}
        if has_image:
            features = captured["features"]
            # Grad-CAM differentiates the class's logit, as in the paper: a confident probability saturates and
            # its gradient vanishes (float32 rounds 1 - p to 0), which would leave an empty map.
            target_logits = logits.float().gather(1, targets[:, None])[:, 0]
            (gradients,) = torch.autograd.grad(target_logits.sum(), features)
            heatmaps = list(grad_cam(features.detach(), gradients).cpu().numpy())
            # The caption's path reuses the image's features (the vision tower is not run again).
            with torch.no_grad():
                if fusion.reads_embeddings:
                    image_kwargs["image_embeds"] = towers.image_embeddings(pixel_values=model_inputs["pixel_values"])
                else:
                    image_kwargs["image_features"] = features.detach()
        target_scores = target_scores.detach()

        # 2. Integrated Gradients on the caption's word embeddings.
        token_attributions = baseline_scores = baseline_log_odds = None
        if has_text:
            token_attributions, baseline_scores, baseline_log_odds = _integrated_gradients(
                model,
                towers,
                model_inputs,
                image_kwargs,
                targets,
                baseline_input_ids(
                    model_inputs["input_ids"], model_inputs["attention_mask"], processor.tokenizer, model.config
                ),
                temperature,
                steps,
                batch_size,
                adaptive,
            )

    explanations = []
    for index, text in enumerate(texts):
        label_id = int(targets[index])
        explanation = Explanation(
            label=id2label.get(label_id, str(label_id)), label_id=label_id, score=float(target_scores[index])
        )
        explanation.heatmap = heatmaps[index]
        if token_attributions is not None:
            ids = model_inputs["input_ids"][index].tolist()
            mask = model_inputs["attention_mask"][index].tolist()
            values = token_attributions[index].tolist()
            special = set(getattr(processor.tokenizer, "all_special_ids", []) or [])
            positions = [p for p, (i, m) in enumerate(zip(ids, mask)) if m and i not in special]
            explanation.tokens = processor.tokenizer.convert_ids_to_tokens([ids[p] for p in positions])
            explanation.token_attributions = [values[p] for p in positions]
            explanation.words, explanation.word_attributions = _words(
                processor.tokenizer, text, ids, positions, [values[p] for p in positions], explanation.tokens
            )
            explanation.baseline_score = float(baseline_scores[index])
            explanation.log_odds = float(target_log_odds[index])
            explanation.baseline_log_odds = float(baseline_log_odds[index])
            explanation.text_delta = float(
                sum(explanation.token_attributions) - (explanation.log_odds - explanation.baseline_log_odds)
            )
        explanations.append(explanation)
    return explanations


def _integrated_gradients(
    model, towers, model_inputs, image_kwargs, targets, baseline_ids, temperature, steps, rows, adaptive
):
    """Per-token attributions (B, L), the baseline's probabilities and log-odds (B,)."""
    embedding = towers.text_model.get_input_embeddings()
    input_ids, attention_mask = model_inputs["input_ids"], model_inputs["attention_mask"]
    token_type_ids = model_inputs.get("token_type_ids")
    device = input_ids.device
    with torch.no_grad():
        actual, baseline = embedding(input_ids).float(), embedding(baseline_ids).float()
        baseline_logits = model(
            input_ids=baseline_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, **image_kwargs
        ).logits
    baseline_scores = class_scores(baseline_logits, model.config, temperature).gather(1, targets[:, None])[:, 0]
    baseline_log_odds = class_log_odds(baseline_logits, targets, model.config, temperature)
    batch = input_ids.shape[0]
    replacement = {}

    def replace_embeddings(module, args, output):
        path = replacement["path"].to(output.dtype)
        if output.shape[1] > path.shape[1]:  # a tower that pads the ids itself (SigLIP): the padding as is
            path = torch.cat([path, output[:, path.shape[1] :]], dim=1)
        return path

    def run(pair_of_row, alpha_of_row, weight_of_row=None):
        """Log-odds at each row's path point; with weights, also the weighted gradient sums per pair."""
        values = torch.empty(len(pair_of_row), device=device)
        sums = torch.zeros_like(actual) if weight_of_row is not None else None
        for start in range(0, len(pair_of_row), rows):
            pairs, alpha = pair_of_row[start : start + rows], alpha_of_row[start : start + rows, None, None]
            with torch.set_grad_enabled(sums is not None):
                path = baseline[pairs] + alpha * (actual[pairs] - baseline[pairs])
                replacement["path"] = path.requires_grad_(sums is not None)
                logits = model(
                    input_ids=input_ids[pairs],
                    attention_mask=attention_mask[pairs],
                    token_type_ids=None if token_type_ids is None else token_type_ids[pairs],
                    **{name: value[pairs] for name, value in image_kwargs.items()},
                ).logits
                chosen = class_log_odds(logits, targets[pairs], model.config, temperature)
            values[start : start + rows] = chosen.detach()
            if sums is not None:
                (gradients,) = torch.autograd.grad(chosen.sum(), path)
                sums.index_add_(0, pairs, gradients.float() * weight_of_row[start : start + rows, None, None])
        return values, sums

    handle = embedding.register_forward_hook(replace_embeddings)
    try:
        if adaptive:
            # Where along the path the log-odds changes: a trained model's can step by several units within a
            # few hundredths of the path, which equally spaced points straddle. The points go where it changes.
            edges = torch.linspace(0, 1, steps + 1, device=device)
            pair_of_edge = torch.arange(batch, device=device).repeat_interleave(steps + 1)
            values, _ = run(pair_of_edge, edges.repeat(batch))
            changes = values.view(batch, steps + 1).diff(dim=1).abs().cpu().numpy()
            points = [adaptive_path_points(change, steps) for change in changes]
        else:
            points = [path_points(steps)] * batch
        pair_of_row = torch.cat([torch.full((len(a),), i, device=device) for i, (a, _) in enumerate(points)])
        alpha_of_row = torch.as_tensor(np.concatenate([a for a, _ in points]), dtype=torch.float32, device=device)
        weight_of_row = torch.as_tensor(np.concatenate([w for _, w in points]), dtype=torch.float32, device=device)
        _, gradient_sums = run(pair_of_row, alpha_of_row, weight_of_row)
    finally:
        handle.remove()
    attributions = ((actual - baseline) * gradient_sums).sum(-1) * attention_mask
    return attributions.detach().cpu(), baseline_scores.detach().cpu(), baseline_log_odds.detach().cpu()


def adaptive_path_points(changes: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Path points and weights for `len(changes)` equal intervals of [0, 1]: each interval gets one midpoint plus a
    share of `steps` more in proportion to how much the explained value changed across it (`changes`), as the
    midpoints of equal sub-intervals (weights: their widths, summing to 1)."""
    intervals = len(changes)
    total = float(np.sum(changes))
    extra = np.zeros(intervals, dtype=np.int64) if total <= 0 else np.floor(steps * changes / total).astype(np.int64)
    alphas, weights = [], []
    for index, count in enumerate(extra + 1):
        width = 1.0 / intervals / count
        alphas.append(index / intervals + (np.arange(count) + 0.5) * width)
        weights.append(np.full(count, width))
    return np.concatenate(alphas), np.concatenate(weights)


def _words(tokenizer, text, ids, positions, values, tokens):
    """Group word-piece attributions into the caption's whitespace-separated words (by character offsets when the
    tokenizer gives them; else one entry per word piece)."""
    spans = [(match.start(), match.end()) for match in re.finditer(r"\S+", text)]
    offsets = None
    if getattr(tokenizer, "is_fast", False) and spans:
        encoded = tokenizer(text, truncation=True, return_offsets_mapping=True)
        real = [i for i in ids if i != getattr(tokenizer, "pad_token_id", None)]
        if encoded["input_ids"] == real or encoded["input_ids"] == ids[: len(encoded["input_ids"])]:
            offsets = encoded["offset_mapping"]
    if offsets is None:
        return list(tokens), list(values)
    totals = [0.0] * len(spans)
    seen = [False] * len(spans)
    for position, value in zip(positions, values):
        start, end = offsets[position] if position < len(offsets) else (0, 0)
        if end <= start:
            continue
        word = next((w for w, (s, e) in enumerate(spans) if s <= start < e), None)
        if word is not None:
            totals[word] += value
            seen[word] = True
    return [text[s:e] for (s, e), kept in zip(spans, seen) if kept], [t for t, kept in zip(totals, seen) if kept]


__all__ = [
    "DEFAULT_STEPS",
    "Explanation",
    "baseline_input_ids",
    "class_log_odds",
    "class_scores",
    "explain_pairs",
    "grad_cam",
]
