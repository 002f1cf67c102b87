"""A run repeated over seeds: each of its split metrics as mean ± standard deviation, and that table in markdown.

The sweep (`mmfusion.training.sweep`) computes it from the seeds' results; `seed_summary.md` and every seed's
evaluation report (`render_markdown(report, seed_summary=...)`) and model card (`write_model_card(...,
seed_summary=...)`) show it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .tables import markdown_table

SECTION_TITLE = "## Across seeds (mean ± standard deviation)"
# train.py's metric prefix -> the split it scored (`eval_*` metrics are the validation split's)
_SPLIT_TITLES = {"eval": "validation"}


@dataclass(frozen=True)
class SeedSummary:
    """`run`: the name of the run that was repeated (without the seed suffix). `metrics`: for every
    `"<split>_<metric>"`, `{"mean", "std", "n", "values"}` over the seeds that reported it (`seed_summary.json`)."""

    run: str
    metrics: dict[str, dict]

    @classmethod
    def from_values(cls, run: str, values: dict[str, list[float]]) -> SeedSummary:
        """From each metric's values, one per seed. `std` is the sample standard deviation (n - 1): the seeds are a
        sample of the runs one could make; 0 for a single seed."""
        metrics = {}
        for metric, seeds in values.items():
            mean = sum(seeds) / len(seeds)
            std = math.sqrt(sum((v - mean) ** 2 for v in seeds) / (len(seeds) - 1)) if len(seeds) > 1 else 0.0
            metrics[metric] = {"mean": mean, "std": std, "n": len(seeds), "values": seeds}
        return cls(run, metrics)

    @property
    def num_seeds(self) -> int:
        return max((entry["n"] for entry in self.metrics.values()), default=0)

    def markdown(self) -> str:
        """The section shown in the reports and cards: one row per split and metric."""
        rows = []
        for metric, entry in self.metrics.items():
            split, name = metric.split("_", 1)
            rows.append([_SPLIT_TITLES.get(split, split), name, f"{entry['mean']:.4f} ± {entry['std']:.4f}"])
        lines = [SECTION_TITLE, "", f"`{self.run}` over {self.num_seeds} seeds.", ""]
        return "\n".join([*lines, *markdown_table(["split", "metric", "mean ± std"], rows)])


__all__ = ["SECTION_TITLE", "SeedSummary"]
