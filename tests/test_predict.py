"""MMFusionPredictor, predict() and mmfusion-predict: one pair, batches, files (labeled and unlabeled), bad inputs."""

import csv
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import tiny_model, tiny_processor
from transformers import AutoModelForSequenceClassification, AutoProcessor

from mmfusion.data import BadRowError
from mmfusion.inference import ImageCheckError, MMFusionPredictor, predict
from mmfusion.inference.predict import main as predict_main

LABELS = {0: "not_hateful", 1: "hateful"}
CAPTIONS = [
    "a cat sits on the mat",
    "",
    "the dog barks at the mailman and then the dog barks again at the mailman",
    "look at this sunset",
    "putting bows on your pet",
]


def colourful_image(seed: int, size=(48, 40), mode="RGB") -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels).convert(mode)


def expected_probabilities(model, processor, image: Image.Image, text: str) -> np.ndarray:
    """What the checkpoint says, computed directly with the model (no mmfusion.inference code)."""
    with torch.no_grad():
        logits = model(**processor(images=image, text=text, return_tensors="pt")).logits
    return logits.softmax(-1)[0].double().numpy()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-early")
    torch.manual_seed(0)
    model = tiny_model("early", id2label=LABELS)
    # Random init gives near-uniform probabilities; larger classifier weights make differences visible.
    with torch.no_grad():
        model.classifier.weight.mul_(50)
    model.save_pretrained(path)
    tiny_processor().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def predictor(checkpoint):
    return MMFusionPredictor.from_pretrained(checkpoint, device="cpu", batch_size=2)


def write_hateful_memes_folder(root, rows_by_split, missing=()):
    """A Hateful-Memes-layout folder: img/<id>.png plus one jsonl per split; ids in `missing` get no image file."""
    (root / "img").mkdir(parents=True)
    for split, rows in rows_by_split.items():
        lines = []
        for index, row in enumerate(rows):
            if row["id"] not in missing:
                colourful_image(index + 10 * len(split)).save(root / "img" / f"{row['id']}.png")
            lines.append(json.dumps({"img": f"img/{row['id']}.png", **row}))
        (root / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_predict_one_pair_matches_the_model(checkpoint, predictor):
    image, text = colourful_image(1, mode="RGBA"), "a cat sits on the mat"
    result = predictor.predict(image, text)

    model = AutoModelForSequenceClassification.from_pretrained(checkpoint).eval()
    expected = expected_probabilities(model, AutoProcessor.from_pretrained(checkpoint), image, text)
    assert set(result) == {"label", "label_id", "probabilities"}
    assert list(result["probabilities"]) == ["not_hateful", "hateful"]
    np.testing.assert_allclose(list(result["probabilities"].values()), expected, atol=1e-6)
    assert result["label_id"] == int(expected.argmax())
    assert result["label"] == LABELS[result["label_id"]]
    assert abs(expected[0] - expected[1]) > 0.05  # the comparison is not between two uniform distributions


def test_image_can_be_a_path_bytes_or_array(predictor, tmp_path):
    image = colourful_image(2)
    image.save(tmp_path / "meme.png")
    reference = predictor.predict(image, "look at this")["probabilities"]
    for variant in (tmp_path / "meme.png", str(tmp_path / "meme.png"), (tmp_path / "meme.png").read_bytes()):
        assert predictor.predict(variant, "look at this")["probabilities"] == pytest.approx(reference, abs=1e-7)
    assert predictor.predict(np.asarray(image), "look at this")["probabilities"] == pytest.approx(reference, abs=1e-7)


def test_batches_with_padding_give_the_single_pair_results(predictor):
    images = [colourful_image(seed) for seed in range(len(CAPTIONS))]
    batched = predictor.predict_batch(images, CAPTIONS)  # batch_size=2: three model calls, padded captions
    for image, text, result in zip(images, CAPTIONS, batched):
        single = predictor.predict(image, text)
        assert result["label"] == single["label"]
        assert result["probabilities"] == pytest.approx(single["probabilities"], abs=1e-5)


def test_predict_batch_needs_one_caption_per_image(predictor):
    with pytest.raises(ValueError, match="2 images but 1 captions"):
        predictor.predict_batch([colourful_image(0), colourful_image(1)], ["one caption"])


@pytest.mark.parametrize("problem", ["missing", "corrupt"])
def test_unreadable_image_path_is_a_clear_error(predictor, checkpoint, tmp_path, capsys, problem):
    path = tmp_path / "meme.png"
    if problem == "corrupt":
        path.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    with pytest.raises(ImageCheckError, match="meme.png"):
        predictor.predict(path, "a caption")

    assert predict_main([str(checkpoint), "--image", str(path), "--text", "a caption"]) == 1
    error = capsys.readouterr().err
    assert "mmfusion-predict: error:" in error and str(path) in error


def test_cli_one_pair_prints_json(predictor, checkpoint, tmp_path, capsys):
    colourful_image(3).save(tmp_path / "meme.png")
    assert predict_main([str(checkpoint), "--image", str(tmp_path / "meme.png"), "--text", "look at this"]) == 0
    printed = json.loads(capsys.readouterr().out)
    expected = predictor.predict(tmp_path / "meme.png", "look at this")
    assert printed["label"] == expected["label"]
    assert printed["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-6)


def test_predict_function_is_the_predictor_in_one_call(predictor, checkpoint):
    image = colourful_image(4)
    result = predict(checkpoint, image, "the dog barks")
    assert result["probabilities"] == pytest.approx(predictor.predict(image, "the dog barks")["probabilities"])
    with pytest.raises(ValueError, match="either an image"):
        predict(checkpoint)


def test_unlabeled_split_to_challenge_csv_keeps_ids_and_order(predictor, checkpoint, tmp_path):
    # Ids as in the real files: leading zeros kept, not sorted; the test split has no labels.
    test_rows = [{"id": i, "text": t} for i, t in zip(["42953", "01235", "00007", "90001", "00100"], CAPTIONS)]
    train_rows = [{"id": "55555", "text": "a labeled row", "label": 1}]
    data = write_hateful_memes_folder(tmp_path / "memes", {"train": train_rows, "test_unseen": test_rows})
    cache = tmp_path / "cache"

    predictions = predictor.predict_file(data, split="test_unseen", cache_dir=cache, progress=False)
    assert predictions.ids == ["42953", "01235", "00007", "90001", "00100"]
    assert predictions.split == "test_unseen"
    assert list(predictions.true_labels) == [-1] * 5
    for index, row in enumerate(test_rows):
        single = predictor.predict(data / "img" / f"{row['id']}.png", row["text"])
        assert predictions[index]["probabilities"] == pytest.approx(single["probabilities"], abs=1e-5)

    output = tmp_path / "submission.csv"
    assert predict_main([str(checkpoint), "--input", str(data), "--split", "test_unseen", "--output", str(output),
                         "--cache-dir", str(cache), "--no-progress"]) == 0  # fmt: skip
    with output.open(newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["id", "proba", "label"]
    assert [row[0] for row in rows[1:]] == predictions.ids
    # the CLI batches all five rows at once (batch size 32), the fixture two at a time: padding differs slightly
    assert [float(row[1]) for row in rows[1:]] == pytest.approx(predictions.probabilities[:, 1].tolist(), abs=1e-5)
    assert [int(row[2]) for row in rows[1:]] == predictions.label_ids.tolist()


def test_a_folder_with_several_splits_needs_a_split(predictor, tmp_path):
    rows = [{"id": "1", "text": "a", "label": 0}]
    data = write_hateful_memes_folder(tmp_path / "memes", {"train": rows, "dev_seen": rows})
    with pytest.raises(ValueError, match="several splits.*train, dev_seen"):
        predictor.predict_file(data, cache_dir=tmp_path / "cache", progress=False)
    with pytest.raises(ValueError, match="no split 'test'"):
        predictor.predict_file(data, split="test", cache_dir=tmp_path / "cache", progress=False)


def test_bad_rows_stop_with_the_row_named_or_are_skipped_with_a_report(predictor, checkpoint, tmp_path, capsys):
    rows = [{"id": i, "text": "a caption", "label": 0} for i in ["00001", "00002", "00003"]]
    data = write_hateful_memes_folder(tmp_path / "memes", {"dev_seen": rows}, missing={"00002"})
    cache = tmp_path / "cache"

    with pytest.raises(BadRowError, match="dev_seen.jsonl, line 2, id '00002'") as raised:
        predictor.predict_file(data, cache_dir=cache, progress=False)
    assert raised.value.id == "00002"
    assert predict_main([str(checkpoint), "--input", str(data), "--cache-dir", str(cache), "--no-progress"]) == 1
    assert "id '00002'" in capsys.readouterr().err

    report = tmp_path / "skipped.json"
    predictions = predictor.predict_file(data, on_bad_rows="skip", report_path=report, cache_dir=cache, progress=False)
    assert predictions.ids == ["00001", "00003"]
    assert predictions.skipped_ids == ["00002"]
    assert json.loads(report.read_text())["num_skipped"] == 1

    output = tmp_path / "predictions.json"
    assert predict_main([str(checkpoint), "--input", str(data), "--on-bad-rows", "skip", "--output", str(output),
                         "--cache-dir", str(cache), "--no-progress"]) == 0  # fmt: skip
    assert [record["id"] for record in json.loads(output.read_text())] == ["00001", "00003"]
    assert "Skipped 1 bad rows" in capsys.readouterr().err


def test_multiclass_jsonl_to_json_and_csv(tmp_path):
    checkpoint = tmp_path / "three-classes"
    tiny_model("concat", id2label={0: "negative", 1: "neutral", 2: "positive"}).save_pretrained(checkpoint)
    tiny_processor().save_pretrained(checkpoint)
    (tmp_path / "imgs").mkdir()
    lines = []
    for index, label in enumerate(["positive", "neutral", "negative"]):
        colourful_image(index).save(tmp_path / "imgs" / f"{index}.png")
        lines.append(json.dumps({"id": f"r{index}", "image": f"imgs/{index}.png", "text": "meh", "label": label}))
    (tmp_path / "sentiment.jsonl").write_text("\n".join(lines) + "\n")

    predictor = MMFusionPredictor.from_pretrained(checkpoint)
    predictions = predictor.predict_file(
        tmp_path / "sentiment.jsonl", cache_dir=tmp_path / "cache", progress=False,
        class_names=["negative", "neutral", "positive"],
    )  # fmt: skip
    assert predictions.ids == ["r0", "r1", "r2"]
    assert list(predictions.true_labels) == [2, 1, 0]
    records = json.loads(predictions.to_json(tmp_path / "out.json").read_text())
    assert records[0]["id"] == "r0" and set(records[0]["probabilities"]) == {"negative", "neutral", "positive"}
    header = next(csv.reader(io.StringIO(predictions.to_csv(tmp_path / "out.csv").read_text())))
    assert header == ["id", "proba_negative", "proba_neutral", "proba_positive", "label"]
    assert list(predictions.to_pandas().columns) == header


def test_cli_over_a_folder_shows_throughput_and_keeps_the_order(predictor, checkpoint, tiny_memes_folder, tmp_path):
    """Many batches (prepared by threads ahead of the model) come back in file order, with images/s on the bar."""
    import subprocess
    import sys

    output = tmp_path / "predictions.json"
    command = [sys.executable, "-m", "mmfusion.inference.predict", str(checkpoint), "--input", str(tiny_memes_folder)]
    result = subprocess.run(
        [
            *command,
            "--split",
            "test",
            "--batch-size",
            "3",
            "--output",
            str(output),
            "--cache-dir",
            str(tmp_path / "c"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "images/s" in result.stderr
    records = json.loads(output.read_text())
    rows = [json.loads(line) for line in (tiny_memes_folder / "test.jsonl").read_text().splitlines()]
    assert [record["id"] for record in records] == [str(row["id"]) for row in rows] and len(rows) == 16
    for record, row in zip(records, rows):
        single = predictor.predict(tiny_memes_folder / row["img"], row["text"])
        assert record["label"] == single["label"]
        assert record["probabilities"] == pytest.approx(single["probabilities"], abs=1e-5)


def test_cli_refuses_images_outside_the_input_folder_unless_allowed(checkpoint, tmp_path, capsys):
    folder = tmp_path / "posts"
    folder.mkdir()
    colourful_image(1).save(tmp_path / "outside.png")
    colourful_image(2).save(folder / "inside.png")
    data = folder / "posts.jsonl"
    data.write_text(
        json.dumps({"id": "a", "image": "inside.png", "text": "fine"})
        + "\n"
        + json.dumps({"id": "b", "image": "../outside.png", "text": "leaves the folder"})
        + "\n"
    )
    cache = ["--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    assert predict_main([str(checkpoint), "--input", str(data), *cache]) == 1
    error = capsys.readouterr().err
    assert "posts.jsonl, line 2, id 'b'" in error and "outside" in error
    output = tmp_path / "predictions.csv"
    assert (
        predict_main(
            [str(checkpoint), "--input", str(data), "--allow-outside-images", "--output", str(output), *cache]
        )
        == 0
    )
    assert [row[0] for row in csv.reader(output.open())][1:] == ["a", "b"]


def test_cli_reads_a_file_whose_fields_have_other_names(predictor, checkpoint, tmp_path, capsys):
    """`--image-column` / `--text-column` (the loader options every command shares) reach `predict_file`."""
    import subprocess
    import sys

    folder = tmp_path / "posts"
    (folder / "pics").mkdir(parents=True)
    rows = []
    for index, (post_id, caption) in enumerate(zip(["b7", "a1", "c3"], CAPTIONS)):
        colourful_image(40 + index).save(folder / "pics" / f"{post_id}.png")
        rows.append({"id": post_id, "img": f"pics/{post_id}.png", "caption": caption})
    data = folder / "posts.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    cache = ["--cache-dir", str(tmp_path / "cache"), "--no-progress"]

    # The default column names are not in the file: the error names the option, and the option now exists here.
    assert predict_main([str(checkpoint), "--input", str(data), *cache]) == 1
    error = capsys.readouterr().err
    assert "no column 'image'" in error and "image_column" in error

    output = tmp_path / "out.csv"
    result = subprocess.run(
        [sys.executable, "-m", "mmfusion.inference.predict", str(checkpoint), "--input", str(data),
         "--image-column", "img", "--text-column", "caption", "--output", str(output), *cache],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    with output.open(newline="") as handle:
        written = list(csv.reader(handle))
    assert written[0] == ["id", "proba", "label"]
    assert [row[0] for row in written[1:]] == ["b7", "a1", "c3"]  # file order, ids from the file
    for row, line in zip(written[1:], rows):
        single = predictor.predict(folder / line["img"], line["caption"])
        assert float(row[1]) == pytest.approx(single["probabilities"]["hateful"], abs=1e-5)
        assert int(row[2]) == single["label_id"]


def test_shares_are_whole_contiguous_batches_covering_every_row_once():
    from mmfusion.inference.sharding import batch_aligned_shares

    for rows, batch, processes in [(16, 3, 2), (5, 32, 2), (0, 4, 3), (7, 1, 3), (100, 8, 4)]:
        shares = batch_aligned_shares(rows, batch, processes)
        assert len(shares) == processes
        assert [row for share in shares for row in share] == list(range(rows))
        assert all(share.start % batch == 0 for share in shares if len(share))  # batches as one process cuts them


def test_accelerate_launch_shares_the_rows_and_writes_the_single_process_file(
    repo_root, checkpoint, tiny_memes_folder, tmp_path
):
    """`accelerate launch -m mmfusion.inference.predict` on a CPU: with `configs/accelerate/cpu_ddp.yaml` 2 processes
    share the rows and write the 1-process file byte for byte. Plain `--num_processes 2` without GPUs makes accelerate
    start one process (its single-process launcher): that one says so and predicts everything; it is the 1-process
    run here."""
    import os
    import subprocess
    import sys

    arguments = [str(checkpoint), "--input", str(tiny_memes_folder), "--split", "test", "--batch-size", "3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--mixed_precision", "no", "--dynamo_backend", "no"]

    def run(launcher_options, output):
        command = [*launch, *launcher_options, "-m", "mmfusion.inference.predict", *arguments,
                   "--output", str(tmp_path / output), "--cache-dir", str(tmp_path / f"cache-{output}")]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
        assert result.returncode == 0, result.stderr[-4000:]
        return result.stderr

    alone = run(["--num_processes", "2", "--num_machines", "1", "--main_process_port", "29535"], "one.csv")
    assert "asked for several processes but started this one alone" in alone
    assert "Wrote 16 predictions (test) to" in alone  # one process predicted all 16 rows
    config = str(repo_root / "configs" / "accelerate" / "cpu_ddp.yaml")
    shared = run(["--config_file", config, "--main_process_port", "29536"], "two.csv")
    assert shared.count("Wrote 16 predictions (test, predicted by 2 processes)") == 1  # one process writes
    assert "started this one alone" not in shared
    one, two = (tmp_path / "one.csv").read_bytes(), (tmp_path / "two.csv").read_bytes()
    assert one.count(b"\n") == 17 and two == one

    # an input the main process cannot load: every process stops with its error, none waits for the others and
    # ends in a process-group traceback
    missing = tmp_path / "missing.jsonl"
    command = [*launch, "--config_file", config, "--main_process_port", "29537", "-m", "mmfusion.inference.predict",
               str(checkpoint), "--input", str(missing), "--output", str(tmp_path / "none.csv")]  # fmt: skip
    failed = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert failed.returncode != 0
    assert failed.stderr.count(f"mmfusion-predict: error: data file for split 'train' not found: {missing}") == 2
    assert "[rank1]: Traceback" not in failed.stderr and "terminate called" not in failed.stderr
