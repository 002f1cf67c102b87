"""The sweep runner, against a stand-in training script run as a real subprocess."""

import csv
import json
import textwrap

import pytest
import yaml

from mmfusion.training.sweep import load_sweep, main, run_sweep

# Follows train.py's contract: `python SCRIPT CONFIG.yaml`, metrics in output_dir/all_results.json.
# eval_auroc peaks at learning_rate 1e-4; eval_accuracy instead grows with the batch size.
STAND_IN = textwrap.dedent(
    """
    import json, math, pathlib, sys
    import yaml

    config = yaml.safe_load(open(sys.argv[1]))
    print(f"training {config['run_name']} with lr={config['learning_rate']}", flush=True)
    if config.get("fail"):
        print("CUDA out of memory (pretend)", file=sys.stderr, flush=True)
        sys.exit(3)
    if config.get("forget_results"):
        sys.exit(0)
    lr = float(config["learning_rate"])
    auroc = 0.9 - 0.1 * abs(math.log10(lr) + 4)
    results = {
        "eval_auroc": round(auroc, 6),
        "eval_accuracy": config["per_device_train_batch_size"] / 1000,
        "test_auroc": round(auroc - 0.01, 6),
        "train_loss": 0.5,
        "epoch": float(config["num_train_epochs"]),
    }
    pathlib.Path(config["output_dir"], "all_results.json").write_text(json.dumps(results))
    """
)

SWEEP = {
    "base": {"dataset": "demo", "fusion": "concat", "num_train_epochs": 2, "per_device_train_batch_size": 64},
    "runs": [
        {"name": "adam_lr1e-2", "description": "Adam, moderate learning rate", "optim": "adamw_torch",
         "learning_rate": 1e-2},
        {"name": "adam_lr1e-4", "description": "slow learning", "optim": "adamw_torch", "learning_rate": "1e-4",
         "weight_decay": 1e-4, "per_device_train_batch_size": 128},
        {"name": "sgd_oom", "optim": "sgd", "optim_args": "momentum=0.9", "learning_rate": 1e-2, "fail": True},
        {"name": "sgd_lr1e-3", "optim": "sgd", "optim_args": "momentum=0.9", "learning_rate": 1e-3},
        {"name": "no_results", "learning_rate": 1e-3, "forget_results": True},
    ],
}  # fmt: skip


@pytest.fixture
def stand_in(tmp_path):
    script = tmp_path / "fake_train.py"
    script.write_text(STAND_IN)
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump(SWEEP, sort_keys=False))
    return script, sweep_file


def test_sweep_runs_ranks_and_reports_failures(tmp_path, stand_in):
    script, sweep_file = stand_in
    root = tmp_path / "out"
    # A stale all_results.json from an earlier sweep must not pass for the failed run's results.
    (root / "sgd_oom").mkdir(parents=True)
    (root / "sgd_oom" / "all_results.json").write_text(json.dumps({"eval_auroc": 0.99}))

    outcome = run_sweep(sweep_file, root, script, echo=False)

    assert outcome.metric == "eval_auroc" and outcome.greater_is_better
    assert [r.name for r in outcome.ranked] == ["adam_lr1e-4", "sgd_lr1e-3", "adam_lr1e-2", "sgd_oom", "no_results"]
    assert [r.rank for r in outcome.ranked] == [1, 2, 3, None, None]
    best = outcome.ranked[0]
    assert best.status == "ok" and best.exit_code == 0
    assert best.value("eval_auroc") == pytest.approx(0.9)
    failed = {r.name: r for r in outcome.failed}
    assert set(failed) == {"sgd_oom", "no_results"}
    assert failed["sgd_oom"].exit_code == 3 and "exit code 3" in failed["sgd_oom"].error
    assert failed["no_results"].exit_code == 0 and "all_results.json" in failed["no_results"].error

    # each run: merged config with its own output_dir, a log with the child's stdout and stderr
    config = yaml.safe_load((root / "adam_lr1e-4" / "run_config.yaml").read_text())
    assert config["output_dir"] == str(root / "adam_lr1e-4")
    assert config["learning_rate"] == pytest.approx(1e-4) and isinstance(config["learning_rate"], float)
    assert config["per_device_train_batch_size"] == 128  # the run overrides the base
    assert config["dataset"] == "demo" and config["fusion"] == "concat" and config["num_train_epochs"] == 2
    assert "description" not in config and "name" not in config
    assert "training adam_lr1e-4 with lr=0.0001" in (root / "adam_lr1e-4" / "train.log").read_text()
    assert "CUDA out of memory (pretend)" in (root / "sgd_oom" / "train.log").read_text()

    markdown = (root / "sweep_results.md").read_text()
    assert "ranked by `eval_auroc`" in markdown
    observations = markdown.split("## Observations", 1)[1]
    assert observations.index("0.900: adam_lr1e-4 - slow learning") < observations.index("0.800: sgd_lr1e-3")
    assert "FAILED: sgd_oom" in observations and "exit code 3" in observations
    assert "3 of 5 runs finished; 2 failed." in markdown
    header = markdown.splitlines()[2]
    for column in ("rank", "name", "status", "eval_auroc", "eval_accuracy", "optim", "learning_rate", "weight_decay"):
        assert f" {column} " in header, column

    payload = json.loads((root / "sweep_results.json").read_text())
    assert payload["metric"] == "eval_auroc"
    assert [run["name"] for run in payload["runs"]] == [r.name for r in outcome.ranked]
    assert payload["runs"][0]["results"]["test_auroc"] == pytest.approx(0.89)
    assert payload["runs"][3]["status"] == "failed" and payload["runs"][3]["exit_code"] == 3

    with (root / "sweep_results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["name"] for row in rows] == [r.name for r in outcome.ranked]
    assert rows[0]["rank"] == "1" and rows[3]["status"] == "failed" and rows[3]["rank"] == ""
    assert float(rows[1]["eval_auroc"]) == pytest.approx(0.8)


def test_explicit_metric_and_cli(tmp_path, stand_in, capsys):
    script, _ = stand_in
    sweep = dict(SWEEP, metric="eval_accuracy", runs=[r for r in SWEEP["runs"] if r["name"] != "no_results"])
    sweep_file = tmp_path / "by_accuracy.yaml"
    sweep_file.write_text(yaml.safe_dump(sweep, sort_keys=False))
    root = tmp_path / "cli"

    exit_code = main([str(sweep_file), "--output-root", str(root), "--train-script", str(script), "--quiet"])

    assert exit_code == 1  # a run failed
    printed = capsys.readouterr().out
    assert "ranked by `eval_accuracy`" in printed and "FAILED: sgd_oom" in printed
    assert "[adam_lr1e-4]" not in printed  # --quiet: training output only in the logs
    ranked = [run["name"] for run in json.loads((root / "sweep_results.json").read_text())["runs"]]
    assert ranked[0] == "adam_lr1e-4"  # batch 128 -> accuracy 0.128, the others 0.064
    assert ranked[-1] == "sgd_oom"


def test_only_and_dry_run(tmp_path, stand_in):
    script, sweep_file = stand_in
    outcome = run_sweep(sweep_file, tmp_path / "dry", script, only=["adam_lr1e-2"], dry_run=True, echo=False)
    assert [(r.name, r.status) for r in outcome.ranked] == [("adam_lr1e-2", "skipped")]
    assert (tmp_path / "dry" / "adam_lr1e-2" / "run_config.yaml").exists()
    assert not (tmp_path / "dry" / "adam_lr1e-4").exists()
    assert main([str(sweep_file), "--output-root", str(tmp_path / "ok"), "--train-script", str(script), "--quiet",
                 "--only", "adam_lr1e-2", "sgd_lr1e-3"]) == 0  # fmt: skip
    with pytest.raises(ValueError, match="no run named"):
        run_sweep(sweep_file, tmp_path / "x", script, only=["missing"], echo=False)


@pytest.mark.parametrize(
    "sweep, message",
    [
        ({"base": {}, "runs": []}, "non-empty list"),
        ({"runs": [{"learning_rate": 1e-3}]}, "must be a mapping with a `name`"),
        ({"runs": [{"name": "a"}, {"name": "a"}]}, "duplicate run name"),
        ({"runs": [{"name": "../escape"}]}, "folder name"),
        ({"runs": [{"name": "a"}], "metrics": "eval_auroc"}, "unknown key"),
    ],
)
def test_invalid_sweeps(sweep, message):
    with pytest.raises(ValueError, match=message):
        load_sweep(sweep)


def test_repository_sweep_preset_is_valid(repo_root):
    spec = load_sweep(repo_root / "configs" / "sweep_notebook.yaml")
    assert spec.base["dataset"] == "demo"
    assert len(spec.runs) >= 8
    assert {run.get("optim", spec.base.get("optim")) for run in spec.runs} == {"adamw_torch_fused", "sgd"}
    for run in spec.runs:
        assert isinstance(run.get("learning_rate", spec.base.get("learning_rate")), float), run["name"]


PRESETS = [
    "notebook_part1_concat",
    "notebook_part2_early",
    "recommended_early",
    "sentiment_3class",
    "hateful_memes_clip_cross",
    "hateful_memes_clip_rgcl",
]


@pytest.mark.parametrize("preset", PRESETS)
def test_training_presets_parse_with_train_py_arguments(repo_root, preset):
    from mmfusion.training.arguments import parse_arguments

    # bf16 is refused by TrainingArguments on a machine without a GPU; everything else must parse as written
    model_args, data_args, training_args = parse_arguments(
        [str(repo_root / "configs" / f"{preset}.yaml"), "--bf16", "false"]
    )
    raw = yaml.safe_load((repo_root / "configs" / f"{preset}.yaml").read_text())
    assert isinstance(raw["learning_rate"], float)  # `1e-4` without a dot would be a YAML string
    assert training_args.learning_rate == raw["learning_rate"]
    assert training_args.output_dir == raw["output_dir"]
    if preset.startswith("notebook") or preset == "recommended_early":
        assert data_args.dataset == "data/hateful_memes"
        assert model_args.text_model_name_or_path == "bert-base-uncased"
    if preset == "hateful_memes_clip_cross":
        assert model_args.fusion == "cross" and model_args.freeze_text_encoder and model_args.freeze_vision_encoder
        assert model_args.text_model_name_or_path == model_args.vision_model_name_or_path
        assert data_args.validation_split == "dev_seen"  # model selection never on a test split
    if preset == "hateful_memes_clip_rgcl":  # RGCL's run_rac.py settings (issue 21)
        assert (model_args.fusion, model_args.objective, model_args.rgcl_k, model_args.rgcl_margin) == (
            "align", "rgcl", 12, 0.1)  # fmt: skip
        assert (model_args.fusion_map_dim, model_args.fusion_num_pre_output_layers) == (1024, 3)
        assert not model_args.dual_encoder_projections and model_args.freeze_text_encoder
        assert (training_args.per_device_train_batch_size, training_args.max_grad_norm) == (64, 0.1)
        assert (training_args.num_train_epochs, training_args.lr_scheduler_type.value) == (30, "constant")
        assert data_args.validation_split == "dev_seen" and training_args.metric_for_best_model == "auroc"
    if preset == "sentiment_3class":
        assert data_args.class_names == ["negative", "neutral", "positive"]
        assert training_args.metric_for_best_model == "macro_f1"


def test_sweep_runs_parse_with_train_py_arguments(repo_root, tmp_path):
    from mmfusion.training.arguments import parse_arguments
    from mmfusion.training.sweep import run_arguments

    spec = load_sweep(repo_root / "configs" / "sweep_notebook.yaml")
    for run in spec.runs:
        path = tmp_path / f"{run['name']}.yaml"
        path.write_text(yaml.safe_dump(run_arguments(spec.base, run, tmp_path)))
        model_args, data_args, training_args = parse_arguments([str(path)])
        assert training_args.optim.value in ("adamw_torch_fused", "sgd"), run["name"]
        assert training_args.output_dir == str(tmp_path / run["name"])
        assert model_args.fusion == "concat" and data_args.dataset == "demo"
        assert not training_args.load_best_model_at_end


# Leaves what train.py leaves for the report and card writers: eval_report.json and .md, the saved model config, a card.
SEEDED_STAND_IN = textwrap.dedent(
    """
    import json, pathlib, sys
    import yaml

    config = yaml.safe_load(open(sys.argv[1]))
    output = pathlib.Path(config["output_dir"])
    seed = config["seed"]
    results = {"eval_auroc": 0.80 + 0.01 * seed, "test_auroc": 0.70 + 0.02 * seed, "eval_runtime": 1.0}
    (output / "all_results.json").write_text(json.dumps(results))
    report = {"label_names": ["not_hateful", "hateful"], "num_labels": 2, "primary_metric": "auroc", "splits": {}}
    (output / "eval_report.json").write_text(json.dumps(report))
    (output / "eval_report.md").write_text("# Evaluation report\\n")
    (output / "config.json").write_text(json.dumps({"model_type": "mmfusion", "fusion": config["fusion"]}))
    (output / "README.md").write_text("# Model card\\n")
    """
)


def test_seeds_repeat_each_run_and_report_mean_and_std_per_split(tmp_path, repo_root):
    script = tmp_path / "seeded_train.py"
    script.write_text(SEEDED_STAND_IN)
    (tmp_path / "model_card.md").write_text((repo_root / "model_card.md").read_text())  # the card's template
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump({"fusion": "cross", "learning_rate": 1e-4}))
    sweep = tmp_path / "seeds.yaml"
    sweep.write_text(yaml.safe_dump({"base_config": "recipe.yaml", "seeds": [0, 1, 2], "runs": [{"name": "clip"}]}))
    outcome = run_sweep(sweep, tmp_path / "out", script, echo=False)
    assert sorted(r.name for r in outcome.ranked) == ["clip_seed0", "clip_seed1", "clip_seed2"]
    assert all(r.config["fusion"] == "cross" for r in outcome.ranked)  # from base_config
    summary = json.loads((tmp_path / "out" / "seed_summary.json").read_text())["clip"]
    assert summary["eval_auroc"]["mean"] == pytest.approx(0.81)
    assert summary["eval_auroc"]["std"] == pytest.approx(0.01)  # sample std of 0.80, 0.81, 0.82
    assert summary["test_auroc"]["mean"] == pytest.approx(0.72) and summary["test_auroc"]["std"] == pytest.approx(0.02)
    assert "eval_runtime" not in summary
    table = "| validation | auroc | 0.8100 ± 0.0100 |\n| test | auroc | 0.7200 ± 0.0200 |\n"
    assert (tmp_path / "out" / "seed_summary.md").read_text().endswith(table)
    for seed in range(3):
        run = tmp_path / "out" / f"clip_seed{seed}"
        # written again by their writers from the run's files, each ending with the summary over the seeds
        report = (run / "eval_report.md").read_text()
        assert report.startswith("# Evaluation report\n\nClasses: `not_hateful`, `hateful`.") and report.endswith(
            table
        )
        card = (run / "README.md").read_text()
        assert "**cross fusion**" in card and "| learning_rate | 0.0001 |" in card and f"| seed | {seed} |" in card
        assert card.endswith(table) and card.count("## Across seeds") == 1

    spec = load_sweep(repo_root / "configs" / "hateful_memes_clip_cross_seeds.yaml")
    assert spec.seeds == [0, 1, 2, 3, 4] and spec.base["fusion"] == "cross"
