"""Hyperparameter sweeps over `train.py`: one training subprocess per run, results ranked in one table.

A sweep file is YAML (or JSON):

```yaml
base:                      # train.py arguments shared by every run
  dataset: demo
  fusion: concat
metric: eval_accuracy      # optional; default eval_auroc if any run reports it, else eval_macro_auroc (multi-label), eval_macro_f1, eval_accuracy
greater_is_better: true    # optional; default: true unless the metric is a loss
output_root: outputs/sweep # optional; --output-root wins
runs:
  - name: adam_lr1e-4      # required, unique; becomes the run's folder
    description: "..."     # optional; shown in the table, not passed to train.py
    optim: adamw_torch_fused
    learning_rate: 1.0e-4
```

For each run: `base` and the run are merged (the run wins), `output_dir` is set to `output_root/name`, the merged
arguments are written to `output_root/name/run_config.yaml`, and `python TRAIN_SCRIPT run_config.yaml` runs as a
subprocess whose output goes to `output_root/name/train.log` (and to the console). Its metrics are read from
`output_root/name/all_results.json`. A run that exits non-zero, or exits 0 without writing `all_results.json`, is
recorded as failed with its exit code. `sweep_results.md` / `.json` / `.csv` in `output_root` rank the runs by the
metric, like the notebook's "Observations" list.

Seeds: with `seeds: [0, 1, 2]` (or `--seeds 0 1 2`) every run is repeated once per seed (`<name>_seed<N>`, train.py's
`--seed N`), and `seed_summary.md` / `.json` give each run's **mean ± standard deviation** over its seeds for every
split's metrics (`eval_*`: the validation split, `test_*`: the test split); each of its seeds' evaluation report
(`eval_report.md`) and model card (`README.md`) is then written again by its own writer with that table, from what
the run left in its folder (`eval_report.json`, the saved model config, `run_config.yaml`).
`base_config: configs/recipe.yaml` takes the base arguments from a train.py config file (the sweep's `base` wins), so
a recipe runs over seeds unchanged:

```yaml
base_config: configs/hateful_memes_clip_cross.yaml
seeds: [0, 1, 2, 3, 4]
runs:
  - name: clip_cross
```

Usage: `python -m mmfusion.training.sweep SWEEP.yaml [--output-root DIR] [--train-script train.py] [--seeds N ...]`.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import re
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from ..evaluation.model_card import MODEL_CARD
from ..evaluation.report import REPORT_JSON, REPORT_MARKDOWN, write_report_markdown
from ..evaluation.seeds import SeedSummary
from ..evaluation.tables import markdown_table, strict_json
from .card import MODEL_CARD_TEMPLATE, can_rewrite_model_card, rewrite_model_card

logger = logging.getLogger(__name__)

RUN_META_KEYS = ("name", "description")
DEFAULT_METRICS = ("eval_auroc", "eval_macro_auroc", "eval_macro_f1", "eval_accuracy")
# Metrics shown next to the ranking metric when the runs report them.
SUMMARY_METRICS = (
    "eval_auroc",
    "eval_accuracy",
    "eval_macro_f1",
    "eval_f1",
    "test_auroc",
    "test_accuracy",
    "test_macro_f1",
    "eval_macro_auroc",
    "test_macro_auroc",
)
RUN_CONFIG = "run_config.yaml"
TRAIN_LOG = "train.log"
ALL_RESULTS = "all_results.json"
RESULTS_STEM = "sweep_results"
SEED_SUMMARY_STEM = "seed_summary"
_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.=+-]*")
# PyYAML reads `1e-4` (no dot) as a string; such values are turned into floats.
_FLOAT_PATTERN = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


@dataclass
class SweepSpec:
    base: dict
    runs: list[dict]
    metric: str | None = None
    greater_is_better: bool | None = None
    output_root: str | None = None
    seeds: list[int] | None = None


@dataclass
class RunResult:
    name: str
    description: str
    status: str  # "ok", "failed" or "skipped" (not run: --dry-run)
    exit_code: int | None
    output_dir: str
    config: dict
    results: dict = field(default_factory=dict)
    error: str | None = None
    duration_s: float | None = None
    rank: int | None = None

    def value(self, metric: str) -> float | None:
        value = self.results.get(metric)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return None
        return float(value)


def load_sweep(source: str | Path | dict) -> SweepSpec:
    """Read and check a sweep file (or an already-loaded dict). Strings like `1e-4` become floats."""
    if isinstance(source, dict):
        data, where = source, "sweep"
    else:
        path = Path(source)
        text = path.read_text()
        data, where = (json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)), str(path)
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping with `base` and `runs`")
    known = {"base", "base_config", "runs", "metric", "greater_is_better", "output_root", "seeds"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; expected {', '.join(sorted(known))}")
    base = data.get("base") or {}
    if data.get("base_config"):
        config_path = Path(data["base_config"])
        if not config_path.is_absolute() and not config_path.exists() and not isinstance(source, dict):
            config_path = Path(source).parent / config_path  # relative to the sweep file
        base = {**(yaml.safe_load(config_path.read_text()) or {}), **base}
    seeds = data.get("seeds")
    if seeds is not None and (not isinstance(seeds, list) or not all(isinstance(seed, int) for seed in seeds)):
        raise ValueError(f"{where}: `seeds` must be a list of integers")
    runs = data.get("runs") or []
    if not isinstance(base, dict):
        raise ValueError(f"{where}: `base` must be a mapping of train.py arguments")
    if not isinstance(runs, list) or not runs:
        raise ValueError(f"{where}: `runs` must be a non-empty list of runs")
    names = set()
    for index, run in enumerate(runs):
        if not isinstance(run, dict) or "name" not in run:
            raise ValueError(f"{where}: run #{index + 1} must be a mapping with a `name`")
        name = str(run["name"])
        if not _NAME_PATTERN.fullmatch(name):
            raise ValueError(f"{where}: run name {name!r} must be usable as a folder name (letters, digits, _.=+-)")
        if name in names:
            raise ValueError(f"{where}: duplicate run name {name!r}")
        names.add(name)
    return SweepSpec(
        base=_floats(base),
        runs=[_floats(run) for run in runs],
        metric=data.get("metric"),
        greater_is_better=data.get("greater_is_better"),
        output_root=data.get("output_root"),
        seeds=seeds,
    )


def _floats(values: dict) -> dict:
    return {k: float(v) if isinstance(v, str) and _FLOAT_PATTERN.fullmatch(v) else v for k, v in values.items()}


def run_arguments(base: dict, run: dict, output_root: str | Path) -> dict:
    """The train.py arguments of one run: base, then the run's own (meta keys dropped), then its `output_dir`."""
    merged = {**base, **{k: v for k, v in run.items() if k not in RUN_META_KEYS}}
    merged["output_dir"] = str(Path(output_root) / str(run["name"]))
    merged.setdefault("run_name", str(run["name"]))
    return merged


def _stream(process: subprocess.Popen, log, prefix: str, echo: bool) -> None:
    for line in process.stdout:
        log.write(line)
        log.flush()
        if echo:
            sys.stdout.write(f"{prefix}{line}")
            sys.stdout.flush()


def execute_run(
    name: str,
    arguments: dict,
    train_script: str | Path,
    *,
    description: str = "",
    echo: bool = True,
    timeout: float | None = None,
) -> RunResult:
    """Write the run's config, run train.py on it, and read back its `all_results.json`."""
    output_dir = Path(arguments["output_dir"])
    output_dir.mkdir(parents=True, exist_ok=True)
    config_path = output_dir / RUN_CONFIG
    config_path.write_text(yaml.safe_dump(arguments, sort_keys=False))
    results_path = output_dir / ALL_RESULTS
    results_path.unlink(missing_ok=True)  # a stale file from an earlier sweep must not pass for this run's results
    command = [sys.executable, str(train_script), str(config_path)]
    result = RunResult(name, description, "failed", None, str(output_dir), arguments)
    start = time.monotonic()
    with (output_dir / TRAIN_LOG).open("w") as log:
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1
        )
        reader = threading.Thread(target=_stream, args=(process, log, f"[{name}] ", echo), daemon=True)
        reader.start()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            result.error = f"timed out after {timeout:g} s"
        except BaseException:  # Ctrl-C: never leave a training process behind
            process.kill()
            process.wait()
            reader.join()
            raise
        process.wait()
        reader.join()
    result.duration_s = round(time.monotonic() - start, 1)
    result.exit_code = process.returncode
    if result.error is not None:
        return result
    if process.returncode != 0:
        result.error = f"exit code {process.returncode} (see {output_dir / TRAIN_LOG})"
        return result
    if not results_path.exists():
        result.error = f"exited 0 but wrote no {ALL_RESULTS}"
        return result
    try:
        result.results = json.loads(results_path.read_text())
    except json.JSONDecodeError as error:
        result.error = f"unreadable {ALL_RESULTS}: {error}"
        return result
    result.status = "ok"
    return result


def default_metric(results: list[RunResult]) -> str:
    """`eval_auroc` if any successful run reports it, else `eval_macro_f1`, else `eval_accuracy`."""
    for metric in DEFAULT_METRICS:
        if any(r.value(metric) is not None for r in results if r.status == "ok"):
            return metric
    return DEFAULT_METRICS[-1]


def rank_runs(results: list[RunResult], metric: str, greater_is_better: bool = True) -> list[RunResult]:
    """Runs with a value of `metric`, best first (rank 1, 2, ...), then runs without one (no rank), failed last."""
    scored = [r for r in results if r.value(metric) is not None]
    scored.sort(key=lambda r: r.value(metric), reverse=greater_is_better)
    for rank, run in enumerate(scored, start=1):
        run.rank = rank
    unscored = [r for r in results if r.value(metric) is None]
    for run in unscored:
        run.rank = None
    unscored.sort(key=lambda r: r.status != "ok")
    return scored + unscored


def _varied_keys(runs: list[dict]) -> list[str]:
    """Arguments set by at least one run (the sweep's axes), in first-seen order."""
    keys: dict[str, None] = {}
    for run in runs:
        for key in run:
            if key not in RUN_META_KEYS and key not in ("output_dir", "run_name"):
                keys[key] = None
    return list(keys)


def _format(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}" if 1e-3 <= abs(value) < 100 or value == 0 else f"{value:g}"
    return str(value)


def results_table(ranked: list[RunResult], metric: str, axes: list[str]) -> tuple[list[str], list[list]]:
    """Header and rows of the ranking table (values unformatted)."""
    others = [m for m in SUMMARY_METRICS if m != metric and any(r.value(m) is not None for r in ranked)]
    header = ["rank", "name", "status", metric, *others, *axes, "duration_s", "error"]
    rows = [
        [
            r.rank,
            r.name,
            r.status,
            r.value(metric),
            *(r.value(m) for m in others),
            *(r.config.get(key) for key in axes),
            r.duration_s,
            r.error,
        ]
        for r in ranked
    ]
    return header, rows


def _markdown_cell(value) -> str:
    return _format(value).replace("|", "\\|").replace("\n", " ")


def render_markdown(ranked: list[RunResult], metric: str, axes: list[str], greater_is_better: bool = True) -> str:
    header, rows = results_table(ranked, metric, axes)
    order = "higher" if greater_is_better else "lower"
    lines = [f"# Sweep results (ranked by `{metric}`, {order} is better)", ""]
    lines += markdown_table(header, rows, cell=_markdown_cell)
    lines += [f"## Observations (order by {metric})", ""]
    for r in ranked:
        value = r.value(metric)
        description = f" - {r.description}" if r.description else ""
        if value is not None:
            lines.append(f"- {value:.3f}: {r.name}{description}")
        elif r.status == "ok":
            lines.append(f"- n/a: {r.name}{description} (no `{metric}` in {ALL_RESULTS})")
        elif r.status == "skipped":
            lines.append(f"- not run: {r.name}{description}")
        else:
            lines.append(f"- FAILED: {r.name}{description} ({r.error})")
    finished = sum(r.status == "ok" for r in ranked)
    failed = sum(r.status == "failed" for r in ranked)
    lines += ["", f"{finished} of {len(ranked)} runs finished; {failed} failed."]
    return "\n".join(lines) + "\n"


def write_results(
    output_root: str | Path, ranked: list[RunResult], metric: str, axes: list[str], greater_is_better: bool = True
) -> dict[str, Path]:
    """`sweep_results.md`, `.json` (every run's config and results) and `.csv` in `output_root`."""
    output_root = Path(output_root)
    output_root.mkdir(parents=True, exist_ok=True)
    paths = {suffix: output_root / f"{RESULTS_STEM}.{suffix}" for suffix in ("md", "json", "csv")}
    paths["md"].write_text(render_markdown(ranked, metric, axes, greater_is_better))
    payload = {"metric": metric, "greater_is_better": greater_is_better, "runs": [asdict(r) for r in ranked]}
    paths["json"].write_text(strict_json(payload, default=str))  # undefined metrics (NaN) as null
    header, rows = results_table(ranked, metric, axes)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows([["" if v is None else v for v in row] for row in rows])
    paths["csv"].write_text(buffer.getvalue())
    return paths


def expand_seeds(runs: list[dict], seeds: list[int] | None) -> tuple[list[dict], dict[str, str]]:
    """Each run once per seed (`<name>_seed<N>`, `seed: N`), and which run each expanded name repeats."""
    if not seeds:
        return runs, {}
    expanded, groups = [], {}
    for run in runs:
        for seed in seeds:
            name = f"{run['name']}_seed{seed}"
            expanded.append({**run, "name": name, "seed": seed})
            groups[name] = str(run["name"])
    return expanded, groups


def seed_summaries(results: list[RunResult], groups: dict[str, str]) -> dict[str, SeedSummary]:
    """Per run repeated over seeds: the mean ± std of its splits' metrics (`eval_*`, `test_*`; timings left out)
    over its successful seeds."""
    by_group: dict[str, list[RunResult]] = {}
    for result in results:
        if result.status == "ok" and result.name in groups:
            by_group.setdefault(groups[result.name], []).append(result)
    summaries = {}
    for group, members in by_group.items():
        metrics = sorted(
            {key for member in members for key in member.results if key.startswith(("eval_", "test_"))}
            - {key for member in members for key in member.results if key.endswith(("_runtime", "_per_second"))}
        )
        values = {
            metric: [v for v in (member.value(metric) for member in members) if v is not None] for metric in metrics
        }
        summaries[group] = SeedSummary.from_values(group, {metric: seeds for metric, seeds in values.items() if seeds})
    return summaries


def add_seed_summary(output_dir: Path, summary: SeedSummary, train_script: str | Path) -> None:
    """Write the run's `eval_report.md` and model card (`README.md`) again through their writers, now with the
    summary over its seeds. Only what train.py wrote is rewritten: files that another training script left, or a
    card without the inputs it is written from, stay as they are."""
    if (output_dir / REPORT_MARKDOWN).is_file() and (output_dir / REPORT_JSON).is_file():
        write_report_markdown(output_dir, seed_summary=summary)
    if not (output_dir / MODEL_CARD).is_file():
        return
    template_path = Path(train_script).resolve().parent / MODEL_CARD_TEMPLATE  # the one train.py renders
    if can_rewrite_model_card(output_dir) and template_path.is_file():
        rewrite_model_card(output_dir, output_dir / RUN_CONFIG, template_path, seed_summary=summary)
    else:
        logger.warning("%s: model card left without the summary over seeds (no saved model or template)", output_dir)


def write_seed_summary(
    output_root: Path, results: list[RunResult], groups: dict[str, str], train_script: str | Path
) -> dict[str, Path]:
    """`seed_summary.md` / `.json`, and each seed's evaluation report and model card with its run's summary
    (`add_seed_summary`)."""
    summaries = seed_summaries(results, groups)
    if not summaries:
        return {}
    paths = {suffix: output_root / f"{SEED_SUMMARY_STEM}.{suffix}" for suffix in ("md", "json")}
    paths["md"].write_text("\n".join(summary.markdown() for summary in summaries.values()))
    paths["json"].write_text(strict_json({group: summary.metrics for group, summary in summaries.items()}))
    for result in results:
        if result.status == "ok" and result.name in groups:
            add_seed_summary(Path(result.output_dir), summaries[groups[result.name]], train_script)
    return paths


@dataclass
class SweepOutcome:
    ranked: list[RunResult]
    metric: str
    greater_is_better: bool
    output_root: Path
    files: dict[str, Path]
    interrupted: bool = False

    @property
    def failed(self) -> list[RunResult]:
        return [r for r in self.ranked if r.status == "failed"]


def run_sweep(
    sweep: str | Path | dict | SweepSpec,
    output_root: str | Path | None = None,
    train_script: str | Path = "train.py",
    *,
    only: list[str] | None = None,
    dry_run: bool = False,
    echo: bool = True,
    timeout: float | None = None,
    seeds: list[int] | None = None,
) -> SweepOutcome:
    """Run every run of `sweep` (or those named in `only`) one after the other and write the ranked results.

    `output_root` defaults to the sweep file's `output_root`, else `outputs/sweeps/<sweep file stem>`. With
    `dry_run`, the run configs are written but nothing runs (runs are `skipped`). `timeout`: seconds per run.
    `seeds` (default: the sweep file's) repeats every run once per seed and writes the mean ± std summary.
    """
    spec = sweep if isinstance(sweep, SweepSpec) else load_sweep(sweep)
    if output_root is None:
        stem = Path(sweep).stem if isinstance(sweep, (str, Path)) else "sweep"
        output_root = spec.output_root or Path("outputs") / "sweeps" / stem
    output_root = Path(output_root)
    runs = spec.runs
    if only:
        missing = sorted(set(only) - {str(r["name"]) for r in runs})
        if missing:
            raise ValueError(f"--only: no run named {', '.join(missing)}")
        runs = [r for r in runs if str(r["name"]) in only]
    runs, groups = expand_seeds(runs, seeds if seeds is not None else spec.seeds)
    results = []
    interrupted = False
    for index, run in enumerate(runs, start=1):
        name = str(run["name"])
        arguments = run_arguments(spec.base, run, output_root)
        description = str(run.get("description", "") or "")
        if dry_run:
            Path(arguments["output_dir"]).mkdir(parents=True, exist_ok=True)
            (Path(arguments["output_dir"]) / RUN_CONFIG).write_text(yaml.safe_dump(arguments, sort_keys=False))
            results.append(RunResult(name, description, "skipped", None, arguments["output_dir"], arguments))
            continue
        if echo:
            print(f"=== [{index}/{len(runs)}] {name} -> {arguments['output_dir']}", flush=True)
        try:
            result = execute_run(name, arguments, train_script, description=description, echo=echo, timeout=timeout)
        except KeyboardInterrupt:
            results.append(
                RunResult(name, description, "failed", None, arguments["output_dir"], arguments, error="interrupted")
            )
            interrupted = True
            break
        if echo:
            print(f"=== {name}: {result.status}" + (f" ({result.error})" if result.error else ""), flush=True)
        results.append(result)
    metric = spec.metric or default_metric(results)
    greater_is_better = spec.greater_is_better
    if greater_is_better is None:
        greater_is_better = "loss" not in metric
    ranked = rank_runs(results, metric, greater_is_better)
    axes = _varied_keys(runs)
    files = write_results(output_root, ranked, metric, axes, greater_is_better)
    seed_files = write_seed_summary(output_root, results, groups, train_script)
    files.update({f"seed_{suffix}": path for suffix, path in seed_files.items()})
    return SweepOutcome(ranked, metric, greater_is_better, output_root, files, interrupted)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mmfusion.training.sweep",
        description="Run a hyperparameter sweep over train.py and rank the runs (see the module docstring).",
    )
    parser.add_argument("sweep", help="sweep YAML/JSON file: base, runs, optional metric")
    parser.add_argument("--output-root", default=None, help="folder of the runs (default: outputs/sweeps/<stem>)")
    parser.add_argument("--train-script", default="train.py", help="training script run as `python SCRIPT CONFIG`")
    parser.add_argument("--only", nargs="+", default=None, metavar="NAME", help="run only these runs")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per run before it is killed")
    parser.add_argument("--dry-run", action="store_true", help="write the run configs, run nothing")
    parser.add_argument("--quiet", action="store_true", help="training output to the logs only")
    parser.add_argument(
        "--seeds", nargs="+", type=int, default=None, help="repeat every run with these seeds; report mean ± std"
    )
    args = parser.parse_args(argv)
    if not args.dry_run and not Path(args.train_script).is_file():
        parser.error(f"training script not found: {args.train_script}")
    outcome = run_sweep(
        args.sweep,
        args.output_root,
        args.train_script,
        only=args.only,
        dry_run=args.dry_run,
        echo=not args.quiet,
        timeout=args.timeout,
        seeds=args.seeds,
    )
    print()
    print(outcome.files["md"].read_text())
    if "seed_md" in outcome.files:
        print(outcome.files["seed_md"].read_text())
    print(f"Written: {', '.join(str(p) for p in outcome.files.values())}")
    if outcome.interrupted:
        return 130
    return 1 if outcome.failed else 0


if __name__ == "__main__":
    sys.exit(main())
