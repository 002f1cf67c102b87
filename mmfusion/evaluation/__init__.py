"""Evaluation of image+text classifiers: predictions, metrics, the modality ablation, the report and the model card.

Modules: `predictions` (the `Predictions` of a split and the challenge CSV), `ablation` (blanking a modality and the
verdict on which one a model relies), `metrics` (scikit-learn, offline), `report` (`eval_report.{json,md}`),
`plots` (matplotlib figures), `model_card` (the checkpoint's `README.md`), `seeds` (a run's metrics over seeds:
mean ± std) and `tables` (markdown tables and strict JSON, for all of them and the sweep).

This `__init__` imports nothing, so `mmfusion.inference` can use `predictions` and `ablation` without loading
scikit-learn or matplotlib.
"""
