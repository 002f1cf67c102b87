"""`mmfusion-predict`: classify one (image, caption) pair or a whole file, from the command line.

```
mmfusion-predict CHECKPOINT --image meme.png --text "look at this sun"          # prints JSON
mmfusion-predict CHECKPOINT --input data/hateful_memes --split test_unseen --output submission.csv
mmfusion-predict EXPORT_DIR --backend onnx --input test.jsonl --output predictions.json
mmfusion-predict CHECKPOINT --image meme.png --text "look at this sun" --explain explanations/   # + a PNG
mmfusion-predict CHECKPOINT --image meme.png --text "look at this sun" --neighbors 5   # + the 5 nearest examples
```

Also home of `predict(...)`, the one-call Python convenience (`mmfusion.inference.predict`).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
from transformers import HfArgumentParser

from ..data.options import LoaderArguments
from ..evaluation.predictions import OUTPUT_FORMATS, Predictions
from .backends import BACKENDS, ONNX_FILENAME
from .images import ImageCheckError, ImageInput
from .predictor import MMFusionPredictor
from .sharding import is_main_process, launcher_state


def predict(
    checkpoint: str | os.PathLike,
    image: ImageInput | None = None,
    text: str | None = None,
    *,
    input: str | os.PathLike | None = None,
    split: str | None = None,
    backend: str = "torch",
    **options,
) -> dict[str, Any] | Predictions:
    """Load `checkpoint` and classify one pair (`image`, `text`) or every row of `input`.

    A convenience for one-off calls: it loads the model each time. Keep an `MMFusionPredictor` to classify repeatedly.

    Args:
        checkpoint: checkpoint folder or Hub id (`backend="torch"`), or export folder (`backend="onnx"`).
        image, text: one pair (see `MMFusionPredictor.predict`).
        input: instead of a pair, a dataset to predict (see `MMFusionPredictor.predict_file`).
        split: the split of `input`.
        backend: `"torch"` or `"onnx"`.
        options: `device`, `batch_size`, `onnx_file`, `threshold`, `temperature` go to `from_pretrained`; the rest (`on_bad_rows`, `report_path`,
            `progress`, `cache_dir`, ...) to `predict_file`.

    Returns:
        The record of `MMFusionPredictor.predict` for a pair, `Predictions` for an input file.

    Example:

    ```python
    >>> from mmfusion.inference import predict
    >>> predict("outputs/demo-early-fusion", "meme.png", "look at this sun")["label"]
    'hateful'
    ```
    """
    if (input is None) == (image is None):
        raise ValueError("Pass either an image (with its text) or an input file/folder, not both or neither.")
    loading_keys = ("device", "batch_size", "onnx_file", "threshold", "temperature")
    loading = {key: options.pop(key) for key in loading_keys if key in options}
    predictor = MMFusionPredictor.from_pretrained(checkpoint, backend=backend, **loading)
    if image is not None:
        if options:
            raise TypeError(f"Options for input files only: {', '.join(options)}")
        return predictor.predict(image, text)
    return predictor.predict_file(input, split=split, **options)


def build_parser() -> HfArgumentParser:
    # The options that say how to read --input are `LoaderArguments`, parsed from the one dataclass as in every command
    # that loads data; the plain help formatter keeps this command's own "default: ..." wording.
    parser = HfArgumentParser(
        LoaderArguments,
        prog="mmfusion-predict",
        description="Classify (image, caption) pairs with an mmfusion checkpoint or ONNX export.",
        epilog="Bad rows of --input stop with an error naming file, line and id, unless --on-bad-rows skip. The data "
        "options (--image-column, --text-column, --on-bad-rows, ...) are the same in train.py, mmfusion-data and "
        "mmfusion-export.",
        formatter_class=argparse.HelpFormatter,
    )
    parser.add_argument(
        "checkpoint", help="checkpoint folder or Hub id (or an mmfusion-export folder for --backend onnx)"
    )
    pair = parser.add_argument_group("one pair")
    pair.add_argument("--image", help="image file")
    pair.add_argument("--text", help="its caption (use --text '' for none)")
    data = parser.add_argument_group("a file or folder")
    data.add_argument(
        "--input", help="'demo', a Hateful-Memes-layout folder, a .jsonl/.csv/.tsv file, or a Hub dataset name"
    )
    data.add_argument("--split", help="split to predict (e.g. test_unseen); needed when the input has several")
    data.add_argument("--report", help="also write the load report (skipped rows) to this JSON file")
    data.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--output", help="write predictions to a .csv (challenge format) or .json file; default: stdout"
    )
    parser.add_argument("--backend", choices=BACKENDS, default="torch", help="default: torch")
    parser.add_argument(
        "--onnx-file", default=ONNX_FILENAME, help="graph to run with --backend onnx (model_int8.onnx)"
    )
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    parser.add_argument("--batch-size", type=int, default=32, help="default: 32")
    parser.add_argument(
        "--threshold",
        type=parse_threshold,
        help="decision threshold in [0, 1] instead of the checkpoint's (two classes: class 1 when its probability "
        "reaches it; more classes: one per class, comma-separated; multi-label: one for every label, or one per "
        "label, comma-separated); default: the checkpoint's",
    )
    parser.add_argument(
        "--neighbors",
        type=int,
        metavar="K",
        help="also return each pair's K nearest labelled examples of the checkpoint's memory (id, label, "
        "similarity, caption, image); with --input they go to a .json --output (or JSON on stdout)",
    )
    explain = parser.add_argument_group("explanations (PyTorch backend)")
    explain.add_argument(
        "--explain",
        metavar="DIR",
        help="also explain each decision: DIR/<index>_<id>.png (the image with its Grad-CAM heat map, the caption's "
        "words coloured by their Integrated Gradients attribution) and DIR/explanations.jsonl",
    )
    explain.add_argument(
        "--explain-max", type=int, help="explain only the first N rows of --input (default: all of them)"
    )
    explain.add_argument("--explain-steps", type=int, help="Integrated Gradients path points (default: 64)")
    return parser


def parse_threshold(text: str):
    """`--threshold 0.3` or, one per class, `--threshold 0.5,0.4,0.6`; checked to lie in [0, 1] (the predictor checks
    them against the checkpoint: how many, and for single-label classes none at 0)."""
    from ..decisions import check_decision_threshold

    values = [part for part in text.replace(" ", ",").split(",") if part]
    try:
        return check_decision_threshold(values[0] if len(values) == 1 else values, multi_label=True)
    except (ValueError, IndexError) as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if (args.image is None) == (args.input is None):
        parser.error("give either --image (with --text) or --input")
    if args.image is not None and args.text is None:
        parser.error("--image needs --text (use --text '' for an image without caption)")
    if args.explain is not None and args.backend != "torch":
        parser.error("--explain needs gradients: use the PyTorch backend (a checkpoint folder, not an ONNX export)")
    if args.output is not None and Path(args.output).suffix.lower() not in OUTPUT_FORMATS:
        parser.error(f"--output must end in one of {', '.join(OUTPUT_FORMATS)}")
    if args.neighbors is not None and args.neighbors < 1:
        parser.error("--neighbors must be at least 1")
    if args.neighbors and args.output is not None and Path(args.output).suffix.lower() != ".json":
        parser.error("--neighbors: the nearest examples are written to a .json --output (a CSV has no place for them)")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_arguments(parser, args)
    from ..data import BadRowError  # after parsing: --help stays fast

    state = launcher_state()  # `accelerate launch -m mmfusion.inference.predict ...`: the rows are shared out
    device = args.device
    if device is None and state is not None and state.device.type != "cpu":
        device = str(state.device)  # one GPU per process
    try:
        predictor = MMFusionPredictor.from_pretrained(
            args.checkpoint,
            backend=args.backend,
            device=device,
            batch_size=args.batch_size,
            threshold=args.threshold,
            **({"onnx_file": args.onnx_file} if args.backend == "onnx" else {}),
        )
        if args.image is not None:
            record = predictor.predict(args.image, args.text, neighbors=args.neighbors)
            write_pair(record, Path(args.image).stem, args.output, predictor.threshold, predictor.multi_label)
            if args.explain is not None:
                explain_rows(predictor, [args.image], [args.text], [Path(args.image).stem], args)
        else:
            predictions = predictor.predict_file(
                args.input,
                split=args.split,
                report_path=args.report,
                progress=not args.no_progress and is_main_process(state),
                neighbors=args.neighbors,
                **LoaderArguments.from_namespace(args).as_loader_kwargs(),
            )
            if is_main_process(state):  # every process holds all rows; one writes them
                write_file_predictions(predictions, args.output, processes=1 if state is None else state.num_processes)
                if args.explain is not None:
                    explain_input(predictor, predictions.split, args)
    except (BadRowError, ImageCheckError, OSError, ValueError) as error:  # OSError: no such checkpoint/file
        print(f"mmfusion-predict: error: {error}", file=sys.stderr)
        return 1
    finally:
        if state is not None:  # leave the process group before exiting, or gloo aborts the process on an error
            state.destroy_process_group()
    return 0


def explain_input(predictor: MMFusionPredictor, split: str, args: argparse.Namespace) -> None:
    """`--explain DIR` for `--input`: the rows predicted (read again, with the same options), up to `--explain-max`."""
    import datasets

    from ..data import detect_kind, load_image_text_dataset
    from .predictor import encoded_image

    options = LoaderArguments.from_namespace(args).as_loader_kwargs()
    if detect_kind(args.input) == "files" and options.get("class_names") is None:
        options["class_names"] = list(predictor.label_names)  # as predict_file reads it
    dataset = load_image_text_dataset(args.input, **options)[split]
    if args.explain_max is not None:
        dataset = dataset.select(range(min(args.explain_max, len(dataset))))
    dataset = dataset.cast_column("image", datasets.Image(decode=False))
    images = [encoded_image(image) for image in dataset["image"]]
    explain_rows(predictor, images, dataset["text"], [str(i) for i in dataset["id"]], args)


def explain_rows(predictor: MMFusionPredictor, images, texts, ids, args: argparse.Namespace) -> None:
    from .explain import write_explanations

    paths = write_explanations(predictor, images, texts, ids, args.explain, steps=args.explain_steps)
    print(f"Wrote {len(paths)} explanations to {args.explain}", file=sys.stderr)


def write_pair(
    record: dict[str, Any], example_id: str, output: str | None, threshold=None, multi_label: bool = False
) -> None:
    """Print the record as JSON; with `output`, write it there instead (JSON, or a one-row challenge CSV)."""
    if output is None:
        print(json.dumps(record, indent=2))
        return
    if Path(output).suffix.lower() == ".json":
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    else:
        names = list(record["probabilities"])
        probabilities = [[record["probabilities"][name] for name in names]]
        Predictions(
            ids=[example_id],
            probabilities=np.asarray(probabilities),
            label_names=names,
            threshold=threshold,
            multi_label=multi_label,
        ).to_csv(output)
    print(f"Wrote {output}", file=sys.stderr)


def write_file_predictions(predictions: Predictions, output: str | None, processes: int = 1) -> None:
    """Write to `output` (.csv or .json), or the challenge-format CSV to stdout; report skipped rows on stderr.
    `processes`: how many processes predicted the rows (said when several did)."""
    if output is None and predictions.neighbors is not None:
        print(json.dumps(list(predictions), indent=2))
    elif output is None:
        writer = csv.writer(sys.stdout)
        writer.writerow(predictions.columns())
        writer.writerows(predictions.rows())
    else:
        predictions.save(output)
        by = f", predicted by {processes} processes" if processes > 1 else ""
        print(f"Wrote {len(predictions)} predictions ({predictions.split}{by}) to {output}", file=sys.stderr)
    if predictions.skipped_ids:
        where = f" (report: {predictions.report.path})" if getattr(predictions.report, "path", None) else ""
        print(f"Skipped {len(predictions.skipped_ids)} bad rows{where}: {predictions.skipped_ids}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
