#!/usr/bin/env python
"""Check that two train.py output folders hold the same results: identical prediction files, equal report metrics.

    python scripts/compare_runs.py outputs/before outputs/after

Used to show that a refactoring changed no behaviour: run `python train.py --output_dir A` on the old commit and
`--output_dir B` on the new one (same seed), then compare. Exits 1 and lists every difference otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def report_metrics(folder: Path) -> dict:
    """Per split: metrics, baselines, per-class table, confusion matrix and ablation metrics of eval_report.json."""
    report = json.loads((folder / "eval_report.json").read_text())
    keys = ("metrics", "baselines", "per_class", "confusion_matrix", "ablations", "predicted_distribution")
    return {name: {key: split.get(key) for key in keys} for name, split in report["splits"].items()}


def differences(before: Path, after: Path) -> list[str]:
    found = []
    names = sorted(
        {p.name for p in before.glob("predictions_*.csv")} | {p.name for p in after.glob("predictions_*.csv")}
    )
    if not names:
        found.append("no predictions_*.csv in either folder")
    for name in names:
        if not (before / name).exists() or not (after / name).exists():
            found.append(f"{name}: only in one folder")
        elif (before / name).read_bytes() != (after / name).read_bytes():
            found.append(f"{name}: contents differ")
    metrics_before, metrics_after = report_metrics(before), report_metrics(after)
    for split in sorted(set(metrics_before) | set(metrics_after)):
        if metrics_before.get(split) != metrics_after.get(split):
            found.append(f"eval_report.json, split {split}: metrics differ")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    args = parser.parse_args(argv)
    found = differences(args.before, args.after)
    for line in found:
        print(f"DIFFERENT  {line}")
    if not found:
        files = sorted(p.name for p in args.after.glob("predictions_*.csv"))
        print(f"IDENTICAL  {', '.join(files)} byte for byte; eval_report.json metrics equal for every split")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
