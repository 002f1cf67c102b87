"""Calibration: temperature scaling fitted on a labeled split, and how well scores mean what they say (ECE).

Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks"): one scalar `T > 0`, fitted by
L-BFGS on the negative log-likelihood of `softmax(logits / T)` over the validation split. Dividing every logit by
the same positive number keeps each example's ranking of classes, so accuracy, the predicted labels and (for two
classes) AUROC are unchanged; only the confidence moves. `T` is fitted on `log T`, so it stays positive, and kept
within [`MIN_TEMPERATURE`, `MAX_TEMPERATURE`]: a split the model gets entirely right pushes `T` towards 0 (ever
sharper scores keep lowering the NLL), where it stops at the bound, with a note saying so.

Expected calibration error (ECE): examples binned by their top-class confidence into `bins` equal-width bins;
`sum_b (n_b / n) |accuracy_b - confidence_b|`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from .predictions import probabilities_from_logits

MIN_TEMPERATURE = 0.05
MAX_TEMPERATURE = 20.0
ECE_BINS = 15


def _labeled(logits, labels) -> tuple[np.ndarray, np.ndarray]:
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    if logits.ndim != 2 or logits.shape[0] != labels.shape[0]:
        raise ValueError(
            f"logits must be (num_examples, num_classes) for {labels.shape[0]} labels; got {logits.shape}"
        )
    keep = labels >= 0
    if not keep.any():
        raise ValueError("Calibration needs labeled examples; every label is < 0.")
    return logits[keep], labels[keep]


def negative_log_likelihood(logits, labels, temperature: float = 1.0) -> float:
    """Mean cross-entropy of `softmax(logits / temperature)` against `labels` (rows with label < 0 left out)."""
    logits, labels = _labeled(logits, labels)
    scaled = logits / temperature
    scaled = scaled - scaled.max(axis=1, keepdims=True)
    log_probabilities = scaled - np.log(np.exp(scaled).sum(axis=1, keepdims=True))
    return float(-log_probabilities[np.arange(labels.size), labels].mean())


def expected_calibration_error(probabilities, labels, bins: int = ECE_BINS) -> float:
    """ECE of the top-class confidence (see the module docstring); rows with label < 0 left out."""
    probabilities, labels = _labeled(probabilities, labels)
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    error = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            error += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(error)


def reliability_bins(probabilities, labels, bins: int = ECE_BINS) -> list[dict]:
    """Per confidence bin: its range, count, mean confidence and accuracy (what a reliability diagram draws)."""
    probabilities, labels = _labeled(probabilities, labels)
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    rows = []
    for b in range(bins):
        members = which == b
        count = int(members.sum())
        rows.append(
            {
                "low": float(edges[b]),
                "high": float(edges[b + 1]),
                "count": count,
                "confidence": float(confidence[members].mean()) if count else None,
                "accuracy": float(correct[members].mean()) if count else None,
            }
        )
    return rows


@dataclass
class TemperatureFit:
    """The fitted temperature and what it changed on the split it was fitted on (stored as `config.calibration`)."""

    temperature: float
    split: str | None
    num_examples: int
    nll_before: float
    nll_after: float
    ece_before: float
    ece_after: float
    note: str | None = None

    def to_dict(self) -> dict:
        return {key: value for key, value in asdict(self).items() if value is not None}


def fit_temperature(logits, labels, split: str | None = None, max_iter: int = 100) -> TemperatureFit:
    """Fit one temperature on `logits` (N, C) and `labels` (N,) by L-BFGS on the NLL (see the module docstring)."""
    import torch

    logits, labels = _labeled(logits, labels)
    if logits.shape[1] < 2:
        raise ValueError("Temperature scaling needs at least two classes.")
    nll_before = negative_log_likelihood(logits, labels)
    before = probabilities_from_logits(logits, dtype="float64")
    ece_before = expected_calibration_error(before, labels)
    if (logits.argmax(axis=1) == labels).all():
        note = (
            f"the model gets every example of {split or 'the split'} right, so its likelihood keeps improving as "
            "T -> 0: the temperature cannot be estimated from it and is left at 1."
        )
        return TemperatureFit(1.0, split, int(labels.size), nll_before, nll_before, ece_before, ece_before, note)
    logits_t = torch.as_tensor(logits, dtype=torch.float64)
    labels_t = torch.as_tensor(labels)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")
    low, high = math.log(MIN_TEMPERATURE), math.log(MAX_TEMPERATURE)

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits_t / log_t.clamp(low, high).exp(), labels_t)
        loss.backward()
        return loss

    optimizer.step(closure)
    temperature = float(math.exp(min(max(float(log_t.detach()), low), high)))
    nll_after = negative_log_likelihood(logits, labels, temperature)
    note = None
    if not nll_after <= nll_before:  # L-BFGS never makes it worse than where it started; guard all the same
        temperature, nll_after = 1.0, nll_before
    if temperature <= MIN_TEMPERATURE * 1.001 or temperature >= MAX_TEMPERATURE * 0.999:
        note = f"the temperature stopped at its bound {temperature:g}; more validation data would pin it down."
    after = probabilities_from_logits(logits, dtype="float64", temperature=temperature)
    return TemperatureFit(
        temperature=temperature,
        split=split,
        num_examples=int(labels.size),
        nll_before=nll_before,
        nll_after=nll_after,
        ece_before=ece_before,
        ece_after=expected_calibration_error(after, labels),
        note=note,
    )


__all__ = [
    "ECE_BINS",
    "MAX_TEMPERATURE",
    "MIN_TEMPERATURE",
    "TemperatureFit",
    "expected_calibration_error",
    "fit_temperature",
    "negative_log_likelihood",
    "reliability_bins",
]
