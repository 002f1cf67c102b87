"""The meme benchmarks' folders as downloaded (MAMI, HarMeme, Memotion 7k, MultiOFF, MMHS150K, PrideMM): recognised
from their files, quirks handled, every task's labels, rows outside a task counted, bad rows named."""

import os

import datasets
import pytest
from meme_folders import BAD_ROWS, MAKERS, make_harmeme, spoil

from mmfusion.data import BadRowError, LoaderArguments, detect_kind, load_image_text_dataset


def load(root, tmp_path, **options):
    return load_image_text_dataset(root, cache_dir=str(tmp_path / "cache"), return_report=True, **options)


def labels(split):
    feature = split.features["label"]
    names = feature.feature.names if isinstance(feature, datasets.List) else feature.names
    values = split.with_format("arrow")["label"].to_pylist()
    return [
        [names[i] for i in v] if isinstance(v, list) else (names[v] if v is not None and v >= 0 else v) for v in values
    ]


def image_names(split):
    return [
        os.path.basename(image["path"]) for image in split.cast_column("image", datasets.Image(decode=False))["image"]
    ]


@pytest.mark.parametrize("layout", sorted(MAKERS))
def test_each_layout_is_recognised_from_its_files(layout, tmp_path):
    root = MAKERS[layout](tmp_path / layout)
    assert detect_kind(root) == layout


def test_mami_tasks_a_and_b(tmp_path):
    root = MAKERS["mami"](tmp_path / "mami")
    dataset, report = load(root, tmp_path)
    assert list(dataset) == ["train", "test"]
    train = dataset["train"]
    assert train["id"] == ["1.jpg", "2.jpg", "3.jpg"]
    assert labels(train) == ["misogynous", "not_misogynous", "misogynous"]
    assert train["text"] == ['she said "make me a sandwich', "just a cat", '"women" drivers"']  # quotes as written
    assert labels(dataset["test"]) == ["misogynous", "not_misogynous"]  # from test_labels.txt
    assert image_names(dataset["test"]) == ["15000.jpg", "15001.jpg"]
    assert report.task["task"] == "A" and report.task["is_default"]
    assert "default" in report.task_line() and "1 -> misogynous" in report.task_line()

    dataset, report = load(root, tmp_path, task="B")
    assert isinstance(dataset["train"].features["label"], datasets.List)
    assert labels(dataset["train"]) == [["shaming", "objectification"], [], ["stereotype", "violence"]]
    assert labels(dataset["test"]) == [["objectification"], []]
    assert report.task["multi_label"] and not report.task["is_default"]


def test_mami_test_without_labels_file_is_unlabeled(tmp_path):
    root = MAKERS["mami"](tmp_path / "mami")
    os.remove(os.path.join(root, "test", "test_labels.txt"))
    dataset, report = load(root, tmp_path)
    assert dataset["test"]["label"] == [-1, -1] and report.splits["test"].num_unlabeled == 2


@pytest.mark.parametrize("suffix", ["", "_v1"])  # Harm-C, Harm-P
def test_harmeme_tasks_and_quirks(suffix, tmp_path):
    root = make_harmeme(tmp_path / f"harm{suffix}", suffix)
    dataset, report = load(root, tmp_path)
    assert list(dataset) == ["train", "val", "test"]
    train = dataset["train"]
    # the empty first label is outside every task, and counted
    assert train["id"] == ["covid_memes_1", "covid_memes_2", "covid_memes_3", "covid_memes_4", "covid_memes_6"]
    assert labels(train) == ["not_harmful", "harmful", "harmful", "not_harmful", "harmful"]
    assert report.splits["train"].outside_task == {"no harm": 1}
    assert report.task["task"] == "harmful" and report.task["mapping"]["somewhat harmful"] == "harmful"
    assert image_names(train)[0] == "covid_memes_1.png"

    dataset, report = load(root, tmp_path, task="harm")
    assert labels(dataset["train"]) == [
        "not_harmful",
        "somewhat_harmful",
        "very_harmful",
        "not_harmful",
        "very_harmful",
    ]

    dataset, report = load(root, tmp_path, task="target")  # harmful memes with a target only
    assert dataset["train"]["id"] == ["covid_memes_2", "covid_memes_6"]
    assert labels(dataset["train"]) == ["individual", "organization"]
    assert report.splits["train"].outside_task == {"harm 'not harmful'": 2, "no target": 1, "no harm": 1}
    assert len(dataset["test"]) == 0 and report.splits["test"].num_outside_task == 1
    assert "outside the task" in report.summary()


def test_memotion_tasks_text_and_mixed_extensions(tmp_path):
    root = MAKERS["memotion"](tmp_path / "memotion")
    dataset, report = load(root, tmp_path)
    train = dataset["train"]
    assert list(dataset) == ["train"] and len(train) == 5
    assert labels(train) == ["positive", "neutral", "negative", "negative", "positive"]
    assert train["text"][:2] == ["corrected one, with a comma", "ocr only"]  # OCR text when not corrected
    assert image_names(train) == ["image_1.jpg", "image_2.png", "image_3.JPG", "image_4.jpeg", "image_5.png"]
    dataset, _ = load(root, tmp_path, task="humour")
    assert dataset["train"].features["label"].names == ["not_funny", "funny", "very_funny", "hilarious"]
    assert labels(dataset["train"])[:2] == ["hilarious", "not_funny"]
    dataset, _ = load(root, tmp_path, task="overall_sentiment")
    assert labels(dataset["train"])[0] == "very_positive"


def test_multioff(tmp_path):
    root = MAKERS["multioff"](tmp_path / "multioff")
    dataset, _ = load(root, tmp_path)
    assert list(dataset) == ["train", "validation", "test"]
    assert labels(dataset["train"]) == ["offensive", "not_offensive"]
    assert dataset["train"]["text"] == ["first sentence", "second, quoted"]  # CRLF line ends
    assert image_names(dataset["train"]) == ["a.jpg.png", "b.png"]


def test_mmhs150k_majority_votes_and_image_text(tmp_path):
    root = MAKERS["mmhs150k"](tmp_path / "mmhs")
    dataset, report = load(root, tmp_path)
    assert list(dataset) == ["train", "val", "test"]
    train = dataset["train"]
    assert train["id"] == ["1114679353714016256", "1063020048816660480"]  # the tied vote is outside the task
    assert labels(train) == ["hate", "not_hate"]
    assert report.splits["train"].outside_task == {"tied vote [0, 2]": 1}
    assert train["text"][0] == "@user nigga foo https://t.co/x\nTEXT IN THE IMAGE"  # img_txt appended
    assert train["text"][1] == "just a tweet"
    assert image_names(train)[0] == "1114679353714016256.jpg"
    dataset, _ = load(root, tmp_path, task="votes")
    assert labels(dataset["train"]) == [
        ["racist", "homophobe", "religion"],
        ["not_hate", "racist"],
        ["not_hate", "sexist"],
    ]


def test_pridemm(tmp_path):
    root = MAKERS["pridemm"](tmp_path / "pride")
    dataset, report = load(root, tmp_path)
    assert list(dataset) == ["train", "val", "test"]
    assert labels(dataset["train"]) == ["no_hate", "hate", "hate"]
    assert dataset["train"]["text"] == ["love wins", "", "hate, with comma"]  # "None" is no caption
    dataset, report = load(root, tmp_path, task="target")
    assert labels(dataset["train"]) == ["individual", "organization"]  # "1.0" read as 1
    assert report.splits["test"].outside_task == {"no target": 1}
    dataset, _ = load(root, tmp_path, task="stance")
    assert labels(dataset["val"]) == ["neutral"]


@pytest.mark.parametrize("layout", sorted(BAD_ROWS))
@pytest.mark.parametrize("spoilage", ["unknown label", "missing image", "malformed line"])
def test_bad_rows_name_file_line_and_id(layout, spoilage, tmp_path):
    root = MAKERS[layout](tmp_path / layout)
    file, line, row_id = spoil(root, layout, spoilage)
    with pytest.raises(BadRowError) as caught:
        load(root, tmp_path)
    error = caught.value
    assert (os.path.realpath(error.file), error.line, error.id) == (os.path.realpath(file), line, row_id), str(error)
    # skip mode keeps the others and reports this one
    dataset, report = load(root, tmp_path, on_bad_rows="skip")
    assert report.skipped_ids == [row_id]


def test_dataset_format_forces_a_layout_and_task_is_checked(tmp_path):
    root = MAKERS["pridemm"](tmp_path / "pride")
    dataset, _ = load(root, tmp_path, dataset_format="pridemm")
    assert "train" in dataset
    with pytest.raises(ValueError, match="no task 'A'.*hate, target, stance, humour"):
        load(root, tmp_path, task="A")
    with pytest.raises(FileNotFoundError, match="no MAMI split file"):
        load(root, tmp_path, dataset_format="mami")
    with pytest.raises(TypeError, match="task='A' does not apply"):
        load_image_text_dataset("demo", task="A")
    assert "pridemm" in LoaderArguments.__dataclass_fields__["dataset_format"].metadata["choices"]


def harmeme_folder(root, per_split=(24, 8, 8)):
    """A HarMeme folder big enough to train and score on: both classes in every split."""
    from data_files import write_image, write_jsonl

    harm = ["not harmful", "somewhat harmful", "very harmful"]
    index = 0
    for split, size in zip(("train", "val", "test"), per_split):
        rows = []
        for _ in range(size):
            index += 1
            write_image(os.path.join(root, "images", f"m{index}.png"), color=(60 * (index % 3), 0, 0))
            labels = [harm[index % 3]] + (["individual"] if index % 3 else [])
            rows.append({"id": f"m{index}", "image": f"m{index}.png", "labels": labels, "text": f"word{index % 3}"})
        write_jsonl(os.path.join(root, f"{split}.jsonl"), rows)
    return root


def test_train_py_trains_on_a_harmeme_folder_as_downloaded(repo_root, tiny_train_args, tmp_path):
    import json
    import subprocess
    import sys

    root = harmeme_folder(str(tmp_path / "harmeme"))
    output = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, str(repo_root / "train.py"), "--dataset", root, "--task", "harmful", "--output_dir",
         str(output), "--num_train_epochs", "1", "--cache_dir", str(tmp_path / "cache"), *tiny_train_args],
        cwd=repo_root, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    assert "HarMeme task 'harmful' (the default" in result.stderr  # the task and its mapping are reported
    config = json.loads((output / "config.json").read_text())
    assert config["id2label"] == {"0": "not_harmful", "1": "harmful"}
    results = json.loads((output / "all_results.json").read_text())
    assert {"eval_auroc", "test_auroc"} <= set(results)  # val is the validation split, test the test split

    # mmfusion-predict takes the same folder as downloaded, with the same --task
    from mmfusion.inference.predict import main as predict_main

    predictions = tmp_path / "predictions.csv"
    argv = [str(output), "--input", root, "--split", "test", "--task", "harmful", "--output", str(predictions)]
    assert predict_main([*argv, "--cache-dir", str(tmp_path / "cache")]) == 0
    assert [line.split(",")[0] for line in predictions.read_text().splitlines()[1:]] == [
        f"m{i}" for i in range(33, 41)
    ]


def test_mmfusion_data_stats_names_the_task_and_counts_rows_outside_it(tmp_path, capsys):
    from mmfusion.data.cli import main

    root = make_harmeme(tmp_path / "harm")
    assert main(["stats", root, "--task", "target", "--cache-dir", str(tmp_path / "cache")]) == 0
    out = capsys.readouterr().out
    assert "HarMeme task 'target' (default 'harmful'" in out
    assert (
        "train: 2 rows | individual 1 (50.0%)" in out and "train: 2 rows outside the task (harm 'not harmful')" in out
    )
    root = MAKERS["mami"](tmp_path / "mami")
    assert main(["stats", root, "--task", "B", "--cache-dir", str(tmp_path / "cache")]) == 0
    assert "train: 3 rows | shaming 1 (33.3%), stereotype 1" in capsys.readouterr().out


def _image_bytes(split):
    images = split.cast_column("image", datasets.Image(decode=False))["image"]
    return [image["bytes"] if image["bytes"] is not None else open(image["path"], "rb").read() for image in images]


@pytest.mark.parametrize("layout", sorted(MAKERS) + ["mami:B", "mmhs150k:votes"])
def test_convert_round_trips_through_load_dataset(layout, tmp_path):
    from mmfusion.data.cli import main

    layout, _, task = layout.partition(":")
    root = MAKERS[layout](tmp_path / layout)
    out = tmp_path / "hub"
    cache = str(tmp_path / "cache")
    argv = ["convert", root, str(out), "--cache-dir", cache] + (["--task", task] if task else [])
    assert main(argv) == 0
    original = load_image_text_dataset(root, cache_dir=cache, task=task or None)
    converted = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "hub-cache"))
    assert list(converted) == list(original)
    for split in original:
        assert converted[split].features == original[split].features  # Image feature, label names
        for column in ("id", "text", "label"):
            assert converted[split][column] == original[split][column], (split, column)
        assert _image_bytes(converted[split]) == _image_bytes(original[split])
    assert ("task" in (out / "README.md").read_text()) == (layout != "hateful_memes")  # the labels' mapping


@pytest.mark.parametrize("layout", sorted(BAD_ROWS))
def test_the_sweep_recipe_of_each_dataset_parses_and_names_splits_the_layout_has(layout, repo_root, tmp_path):
    import yaml

    from mmfusion.data import LAYOUTS
    from mmfusion.training.arguments import parse_arguments
    from mmfusion.training.sweep import load_sweep, run_arguments

    spec = load_sweep(repo_root / "configs" / f"meme_{layout}.yaml")
    root = MAKERS[layout](tmp_path / layout)
    for run in spec.runs:
        arguments = {**run_arguments(spec.base, run, tmp_path), "bf16": False, "dataset": root}
        path = tmp_path / f"{run['name']}.yaml"
        path.write_text(yaml.safe_dump(arguments))
        _, data_args, training_args = parse_arguments([str(path)])
        assert data_args.dataset_format == layout and data_args.task in LAYOUTS[layout].tasks
        if LAYOUTS[layout].tasks[data_args.task].is_multi_label:  # per-label thresholds need a validation split
            assert training_args.metric_for_best_model == "macro_auroc" and data_args.validation_split is not None
        dataset = load_image_text_dataset(root, **{**data_args.as_loader_kwargs(), "cache_dir": str(tmp_path / "c")})
        for split in (data_args.validation_split, data_args.test_split):
            assert split is None or split in dataset, (run["name"], split)
        assert data_args.validation_split != data_args.test_split or data_args.test_split is None
        if data_args.validation_split is None:
            assert not training_args.load_best_model_at_end  # no model selection on a test split


def test_readme_dataset_table_is_the_generated_one(repo_root):
    from mmfusion.data.meme_datasets import task_table

    readme = (repo_root / "README.md").read_text()
    start, end = (
        "<!-- dataset table: generated by mmfusion.data.meme_datasets.task_table() -->",
        "<!-- end of dataset table -->",
    )
    assert readme[readme.index(start) + len(start) : readme.index(end)].strip() == task_table()
