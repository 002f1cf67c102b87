"""Fuzzing the loader: random corruption of JSONL/CSV bytes and image bytes never loses a row silently.

Whatever the corruption, loading either succeeds with `rows kept + rows reported == rows given`, or raises
`BadRowError` (naming a file) - never another exception type. Fixed seed (`derandomize=True`), well under a minute.
The figures (cases tried, outcomes) are printed at the end: `pytest -s tests/test_data_fuzz.py`.
"""

import os
import shutil
import tempfile
from collections import Counter

import datasets
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from mmfusion.data import BadRowError, load_image_text_dataset

NUM_ROWS = 6
NUM_CASES = int(os.environ.get("MMFUSION_FUZZ_CASES", "200"))
OUTCOMES = Counter()

# Byte values the corruption writes: printable, structural ("{", ",", ":"), control, high (non-UTF-8) and newlines.
_NEW_BYTES = st.sampled_from(list(b'{}[],:"\\ \t\r\n0aZ\x00\x7f\x80\xc3\xe9\xff'))


def _write_dataset(root, fmt):
    """`NUM_ROWS` rows with PNG and JPEG images, as a JSONL or CSV file; returns the data file path."""
    os.makedirs(os.path.join(root, "img"))
    lines = []
    for i in range(NUM_ROWS):
        extension = "png" if i % 2 else "jpg"
        Image.new("RGB", (16 + i, 12), (40 * i, 90, 200 - 30 * i)).save(os.path.join(root, "img", f"{i}.{extension}"))
        label = "yes" if i % 2 else "no"
        if fmt == "jsonl":
            lines.append(
                f'{{"id": "r{i}", "image": "img/{i}.{extension}", "text": "caption {i}", "label": "{label}"}}'
            )
        else:
            lines.append(f"r{i},img/{i}.{extension},caption {i},{label}")
    if fmt == "csv":
        lines.insert(0, "id,image,text,label")
    path = os.path.join(root, f"train.{fmt}")
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("\n".join(lines) + "\n")
    return path


def _corrupt(data: bytes, edits, protected: bytes = b"") -> bytes:
    """Apply `(operation, position, byte)` edits; bytes in `protected` are neither written nor overwritten."""
    data = bytearray(data)
    for operation, position, value in edits:
        if not data:
            break
        position %= len(data)
        if value in protected or (operation in ("replace", "delete") and data[position] in protected):
            continue
        if operation == "replace":
            data[position] = value
        elif operation == "insert":
            data.insert(position, value)
        elif operation == "delete":
            del data[position]
        else:  # truncate
            del data[position:]
    return bytes(data)


def _rows_given(path, fmt) -> int:
    """What a user counts as rows: the non-blank lines (less the CSV header). The fuzzer leaves CSV quotes alone,
    so that a record is a line (a quoted caption may span lines, which is CSV's business, not a corruption's)."""
    with open(path, encoding="utf-8-sig", errors="surrogateescape") as f:
        lines = sum(1 for line in f if line.strip())
    return max(lines - 1, 0) if fmt == "csv" else lines


_EDITS = st.lists(
    st.tuples(st.sampled_from(["replace", "insert", "delete", "truncate"]), st.integers(0, 10_000), _NEW_BYTES),
    min_size=0,
    max_size=4,
)


@pytest.fixture(autouse=True, scope="module")
def _quiet_progress_bars():
    datasets.disable_progress_bars()
    yield
    datasets.enable_progress_bars()
    total = sum(OUTCOMES.values())
    print(f"\nfuzz figures: {total} cases tried")
    for outcome, count in sorted(OUTCOMES.items()):
        print(f"  {count:5d}  {outcome}")


@settings(
    max_examples=NUM_CASES,
    derandomize=os.environ.get("MMFUSION_FUZZ_RANDOM") is None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
@given(
    fmt=st.sampled_from(["jsonl", "csv"]),
    on_bad_rows=st.sampled_from(["skip", "error"]),
    file_edits=_EDITS,
    image_edits=st.lists(st.tuples(st.integers(0, NUM_ROWS - 1), _EDITS), max_size=3),
)
def test_corruption_is_loaded_or_named_never_lost(fmt, on_bad_rows, file_edits, image_edits):
    root = tempfile.mkdtemp(prefix="mmfusion-fuzz-")
    try:
        path = _write_dataset(root, fmt)
        with open(path, "rb") as f:
            original = f.read()
        with open(path, "wb") as f:
            f.write(_corrupt(original, file_edits, protected=b'"' if fmt == "csv" else b""))
        for index, image_edit in image_edits:
            image_path = os.path.join(root, "img", f"{index}.{'png' if index % 2 else 'jpg'}")
            with open(image_path, "rb") as f:
                image_bytes = f.read()
            with open(image_path, "wb") as f:
                f.write(_corrupt(image_bytes, image_edit))

        given_rows = _rows_given(path, fmt)
        try:
            dataset, report = load_image_text_dataset(
                path,
                cache_dir=os.path.join(root, "cache"),
                on_bad_rows=on_bad_rows,
                class_names=["no", "yes"],
                return_report=True,
            )
        except BadRowError as err:
            assert err.file is not None and os.path.basename(err.file) in str(err)  # named, with its file
            kind = "" if err.skippable else f" (whole file: {err.reason.split('(')[0].split(':')[0].strip()})"
            OUTCOMES[f"{on_bad_rows}: BadRowError{kind}"] += 1
            return
        kept = len(dataset["train"])
        assert kept + report.num_skipped == given_rows, (kept, report.skipped, given_rows)
        assert all(row["file"] == path and row["line"] for row in report.skipped)
        if on_bad_rows == "error":
            assert report.num_skipped == 0
        for example in dataset["train"]:  # every kept image decodes
            assert example["image"].mode == "RGB"
        OUTCOMES[f"{on_bad_rows}: loaded, {'some rows skipped' if report.num_skipped else 'all rows kept'}"] += 1
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_fuzzer_can_fail():
    """The invariant the fuzzer checks catches a lost row: the rows of a truncated file are not all there."""
    root = tempfile.mkdtemp(prefix="mmfusion-fuzz-")
    try:
        path = _write_dataset(root, "jsonl")
        dataset = load_image_text_dataset(path, cache_dir=os.path.join(root, "cache"), class_names=["no", "yes"])
        assert len(dataset["train"]) == _rows_given(path, "jsonl") == NUM_ROWS
        with open(path, "a", encoding="utf-8") as f:
            f.write("\n \n")  # blank lines are not rows
        assert _rows_given(path, "jsonl") == NUM_ROWS
    finally:
        shutil.rmtree(root, ignore_errors=True)
