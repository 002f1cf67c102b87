"""A decision-threshold policy fitted on a real demo model's validation scores meets its target on validation, as
every inference path decides (the synthetic-score tests are in test_operating_point.py)."""

from __future__ import annotations

import numpy as np
import pytest

from mmfusion.evaluation.thresholds import fit_decision_threshold


@pytest.mark.parametrize(("policy", "figure", "target"), [("recall=0.99", "recall", 0.99), ("fpr=0.01", "fpr", 0.01)])
def test_policy_fitted_on_the_demo_meets_its_target_on_validation(trained_demo_checkpoint, policy, figure, target):
    from mmfusion.inference import MMFusionPredictor

    predictor = MMFusionPredictor.from_pretrained(trained_demo_checkpoint.path, device="cpu")
    validation = trained_demo_checkpoint.dataset["validation"]
    scores = predictor.predict_dataset(validation, progress=False)
    threshold, figures = fit_decision_threshold(
        scores.probabilities, scores.true_labels, policy, predictor.label_names, split="validation"
    )
    # decided again, independently of the fit's own figures, by the predictor with the fitted threshold
    decided = predictor.predict_dataset(validation, progress=False, threshold=threshold).label_ids
    labels = np.asarray(validation["label"])
    positives, negatives = labels == 1, labels == 0
    measured = {
        "recall": (decided[positives] == 1).mean(),
        "fpr": (decided[negatives] == 1).mean(),
    }[figure]
    assert (measured >= target) if figure == "recall" else (measured <= target), (threshold, figures)
    assert figures[figure] == pytest.approx(measured)
    assert 0.0 < threshold < 1.0
