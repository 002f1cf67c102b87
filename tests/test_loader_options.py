"""The loader options are declared once (`mmfusion.data.LoaderArguments`) and reach every command that loads data:
train.py, `mmfusion-data` (each subcommand), `mmfusion-predict` and `mmfusion-export`, under both spellings."""

import argparse
import subprocess
import sys
from dataclasses import fields

import pytest
from data_files import write_image, write_jsonl

from mmfusion.data import BadRowError, LoaderArguments, load_image_text_dataset
from mmfusion.data.cli import _parser as data_parser
from mmfusion.data.cli import main as data_main
from mmfusion.inference.export import build_parser as export_parser
from mmfusion.inference.export import main as export_main
from mmfusion.training.arguments import argument_parser, parse_arguments
from mmfusion.training.setup import load_data

# A value other than the default for every option: the test below fails when a field is added without one here.
NON_DEFAULT = {
    "image_column": "img",
    "text_column": "caption",
    "label_column": "sentiment",
    "id_column": "post_id",
    "class_names": ["negative", "neutral", "positive"],
    "encoding": "cp1252",
    "on_bad_rows": "skip",
    "allow_outside_images": True,
    "max_image_pixels": 12345,
    "cache_dir": "/tmp/somewhere",
    "demo_seed": 7,
    "dataset_format": "harmeme",
    "task": "target",
}


def data_subcommands() -> dict[str, argparse.ArgumentParser]:
    (subparsers,) = [a for a in data_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(subparsers.choices)


def predict_parser():
    from mmfusion.inference.predict import build_parser

    return build_parser()


def all_parsers() -> dict[str, argparse.ArgumentParser]:
    return {
        "train.py": argument_parser(),
        **{f"mmfusion-data {name}": parser for name, parser in data_subcommands().items()},
        "mmfusion-predict": predict_parser(),
        "mmfusion-export": export_parser(),
    }


def option_strings(parser: argparse.ArgumentParser) -> set[str]:
    return {string for action in parser._actions for string in action.option_strings}


def loader_argv(spelling: str) -> list[str]:
    """NON_DEFAULT as command-line words, `--image_column` (spelling "_") or `--image-column` (spelling "-")."""
    argv = []
    for name, value in NON_DEFAULT.items():
        argv.append("--" + name.replace("_", spelling))
        argv.extend(value if isinstance(value, list) else [str(value)])
    return argv


def test_every_command_that_loads_data_accepts_every_loader_option_in_both_spellings():
    assert set(NON_DEFAULT) == {f.name for f in fields(LoaderArguments)}
    expected = {f"--{f.name}" for f in fields(LoaderArguments)} | {
        "--" + f.name.replace("_", "-") for f in fields(LoaderArguments)
    }
    parsers = all_parsers()
    assert {"mmfusion-data stats", "mmfusion-data grid"} <= set(parsers)
    for command, parser in parsers.items():
        missing = expected - option_strings(parser)
        assert not missing, f"{command} lacks {sorted(missing)}"


@pytest.mark.parametrize("spelling", ["_", "-"])
def test_every_command_parses_the_options_into_the_same_values(spelling):
    argv = loader_argv(spelling)
    expected = LoaderArguments(**NON_DEFAULT)
    _, data_args, _ = parse_arguments(argv)
    parsed = {"train.py": LoaderArguments(**{f.name: getattr(data_args, f.name) for f in fields(LoaderArguments)})}
    for name, parser in data_subcommands().items():
        positional = ["SOURCE", "OUT"] if name == "convert" else ["SOURCE"]
        parsed[f"mmfusion-data {name}"] = LoaderArguments.from_namespace(parser.parse_args([*positional, *argv]))
    parsed["mmfusion-predict"] = LoaderArguments.from_namespace(
        predict_parser().parse_args(["CKPT", "--input", "x.jsonl", *argv])
    )
    parsed["mmfusion-export"] = LoaderArguments.from_namespace(export_parser().parse_args(["CKPT", "OUT", *argv]))
    for command, options in parsed.items():
        assert options == expected, command
    assert expected.as_loader_kwargs()["seed"] == 7 and "demo_seed" not in expected.as_loader_kwargs()


def test_train_py_defaults_are_the_loaders_defaults(tiny_memes_folder, tmp_path):
    # The zero-argument run still trains on the demo, with every loader option at its default...
    _, data_args, _ = parse_arguments([])
    assert data_args.dataset == "demo"
    assert data_args.as_loader_kwargs() == LoaderArguments().as_loader_kwargs()
    # ...and a source takes all of them at their defaults, even those it does not use (the column names here).
    options = LoaderArguments(cache_dir=str(tmp_path / "cache")).as_loader_kwargs()
    assert set(load_image_text_dataset(tiny_memes_folder, **options)) >= {"train", "test_unseen"}


def test_class_names_space_or_comma_separated():
    parser = data_subcommands()["stats"]
    for argv in (["--class-names", "b,a"], ["--class-names", "b", "a"], ["--class_names", "b,", "a"]):
        assert LoaderArguments.from_namespace(parser.parse_args(["SOURCE", *argv])).class_names == ["b", "a"]
    # The old mmfusion-data spelling of the demo seed still works there.
    assert LoaderArguments.from_namespace(parser.parse_args(["demo", "--seed", "3"])).demo_seed == 3


def test_bad_on_bad_rows_is_refused_by_every_parser(capsys):
    for command, parser in all_parsers().items():
        positionals = {"train.py": [], "mmfusion-predict": ["CKPT"], "mmfusion-export": ["CKPT", "OUT"]}
        with pytest.raises(SystemExit):
            parser.parse_args([*positionals.get(command, ["SOURCE"]), "--on-bad-rows", "ignore"])
        assert "invalid choice: 'ignore'" in capsys.readouterr().err, command
    with pytest.raises(ValueError, match="on_bad_rows must be one of"):
        LoaderArguments(on_bad_rows="ignore")  # a YAML config of train.py does not go through argparse's choices


@pytest.fixture
def captioned(tmp_path):
    """A jsonl whose fields are not the default names: `img`, `caption`, `sentiment` (string labels)."""
    root = tmp_path / "posts"
    rows = []
    for index, label in enumerate(["pos", "neg", "pos"]):
        write_image(root / "pics" / f"{index}.png", color=(80 * index, 20, 20))
        rows.append({"id": f"p{index}", "img": f"pics/{index}.png", "caption": f"post {index}", "sentiment": label})
    write_jsonl(root / "posts.jsonl", rows)
    return root / "posts.jsonl"


def test_mmfusion_data_passes_the_options_to_the_loader(captioned, tmp_path, capsys):
    cache = ["--cache-dir", str(tmp_path / "cache")]
    assert data_main(["stats", str(captioned), *cache]) == 1
    assert "no column 'image'" in capsys.readouterr().err
    argv = ["stats", str(captioned), "--image-column", "img", "--text-column", "caption"]
    assert data_main([*argv, "--label-column", "sentiment", "--class-names", "pos,neg", *cache]) == 0
    assert capsys.readouterr().out.strip() == "train: 3 rows | pos 2 (66.7%), neg 1 (33.3%)"


def test_mmfusion_export_passes_the_options_to_the_calibration_data(captioned, tmp_path, capsys):
    # The calibration data is loaded (and checked) before the checkpoint is even opened: the column options must have
    # reached the loader for the error to be about the image's size rather than a missing column.
    argv = ["no-such-checkpoint", str(tmp_path / "exported"), "--calibration", str(captioned)]
    cache = ["--cache-dir", str(tmp_path / "cache")]
    assert export_main([*argv, *cache]) == 1
    assert "no column 'image'" in capsys.readouterr().err
    columns = ["--image-column", "img", "--text-column", "caption", "--label-column", "sentiment"]
    assert export_main([*argv, *columns, "--max-image-pixels", "100", *cache]) == 1
    error = capsys.readouterr().err
    assert "id 'p0'" in error and "max_image_pixels=100" in error


def test_train_py_max_image_pixels_makes_a_large_image_a_bad_row(repo_root, tmp_path):
    root = tmp_path / "posts"
    write_image(root / "img" / "small.png", size=(20, 20))
    write_image(root / "img" / "big.png", size=(200, 200))
    write_jsonl(
        root / "train.jsonl",
        [
            {"id": "small", "image": "img/small.png", "text": "t", "label": "x"},
            {"id": "big", "image": "img/big.png", "text": "t", "label": "y"},
        ],
    )
    argv = [
        "--train_file",
        str(root / "train.jsonl"),
        "--max_image_pixels",
        "10000",
        "--cache_dir",
        str(tmp_path / "c"),
    ]
    # The path train.py takes: its parser, then `load_data`.
    _, data_args, _ = parse_arguments(argv)
    with pytest.raises(BadRowError, match="(?s)id 'big'.*max_image_pixels=10000"):
        load_data(data_args)
    _, data_args, _ = parse_arguments([*argv, "--on_bad_rows", "skip"])
    dataset, report = load_data(data_args)
    assert dataset["train"]["id"] == ["small"] and report.num_skipped == 1
    # And train.py itself, as a user runs it: it stops at the bad row, before building a model.
    result = subprocess.run(
        [sys.executable, str(repo_root / "train.py"), *argv, "--output_dir", str(tmp_path / "out")],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert "id 'big'" in result.stderr and "max_image_pixels=10000" in result.stderr
