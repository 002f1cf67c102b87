"""CPU inference benchmark: PyTorch eager fp32 vs ONNX Runtime fp32, static int8 and dynamic int8, side by side.

Builds a randomly initialised model of a realistic CPU size offline (default: early fusion, a BERT with 4 layers of
width 256, a resnet18-shaped vision tower at 224 px), saves it, exports it with `mmfusion.inference.export_onnx`
(fp32 + static int8 calibrated on `--calibration-size` rows of the demo train split; dynamic int8 with
`quantize_int8`), and measures on the same inputs in the same run:

- batch-1 latency (p50, p95), end-to-end and model-only;
- batch-`--batch-size` throughput (pairs/s), end-to-end and model-only.

Accuracy: label agreement with ORT fp32 and AUROC of each int8 model on the demo test split (400 rows).

`--int8-targets vnni avx2` exports static int8 once per kind of CPU (`mmfusion-export --int8-target`: 8-bit weights
for VNNI, 7-bit for x86 without it) and times each graph on this machine, side by side.

End-to-end = decode the encoded image (PNG bytes) + preprocess (resize, normalise, tokenize) + model, through
`MMFusionPredictor`, exactly what `mmfusion-predict` does. Model-only = the engine on already-processed inputs.
Engines take turns in short blocks of calls (see `interleaved`), so that a noisy neighbour on a shared machine slows
all of them alike; medians and percentiles over all timed calls are reported.

    python benchmarks/bench_inference.py                       # defaults: the realistic size
    python benchmarks/bench_inference.py --text-layers 2 --text-hidden 128 --vision small --image-size 128
    python benchmarks/bench_inference.py --threads 1 --int8-targets vnni avx2
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mmfusion import MMFusionConfig, MMFusionForClassification, MMFusionProcessor, default_image_processor
from mmfusion.configuration_mmfusion import vision_grid_size
from mmfusion.inference import INT8_ONNX_FILENAME, ONNX_FILENAME, MMFusionPredictor, export_onnx
from mmfusion.inference.backends import default_session_options
from mmfusion.inference.export import compare_int8_with_fp32
from mmfusion.inference.quantization import DEFAULT_OP_TYPES, INT8_TARGETS, int8_target, int8_tuning, quantize_int8
from mmfusion.training.precision import describe_cpu
from mmfusion.training.presets import resnet18_config, small_text_config, small_vision_config
from mmfusion.training.tokenization import train_wordpiece_tokenizer

DYNAMIC_INT8_FILENAME = "model_int8_dynamic.onnx"
WORDS = (
    "look at this my friend today again so very what a day the people here when you see it we sun fire summer "
    "desert lava flame snow ice winter glacier frost blizzard cat dog beach sunset character color matters"
).split()


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fusion", choices=("early", "concat", "attention"), default="early")
    parser.add_argument("--text-layers", type=int, default=4)
    parser.add_argument("--text-hidden", type=int, default=256)
    parser.add_argument(
        "--vision", choices=("resnet18", "small"), default="resnet18", help="small: 4 stages, width 16"
    )
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--num-image-tokens", type=int, default=49)
    parser.add_argument("--caption-words", type=int, default=16, help="words per caption (about 1.2 tokens each)")
    parser.add_argument("--source-image-size", type=int, default=500, help="side of the encoded input images")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--latency-runs", type=int, default=40)
    parser.add_argument("--throughput-runs", type=int, default=6)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for PyTorch and ORT alike")
    parser.add_argument(
        "--int8-ops",
        default=",".join(DEFAULT_OP_TYPES),
        help="operator types to quantize ('all' = every supported type, convolutions included)",
    )
    parser.add_argument("--calibration-size", type=int, default=300, help="demo train rows for static int8")
    parser.add_argument(
        "--int8-targets",
        nargs="+",
        choices=tuple(INT8_TARGETS),
        help="kinds of CPU to export static int8 for, each timed here (default: this machine's kind)",
    )
    parser.add_argument("--workdir", help="keep the checkpoint and exports here (default: a temporary folder)")
    parser.add_argument("--json", help="also write the results as JSON to this file")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def build_checkpoint(args: argparse.Namespace, folder: Path) -> Path:
    """A randomly initialised model and a WordPiece tokenizer trained on random captions: no download."""
    rng = np.random.default_rng(args.seed)
    corpus = [" ".join(rng.choice(WORDS, size=12)) for _ in range(500)]
    tokenizer = train_wordpiece_tokenizer(corpus, vocab_size=1000, model_max_length=128)
    vision_config = resnet18_config() if args.vision == "resnet18" else small_vision_config(width=16, num_stages=4)
    grid = vision_grid_size(vision_config, args.image_size) or 1
    config = MMFusionConfig(
        text_config=small_text_config(len(tokenizer), hidden_size=args.text_hidden, num_layers=args.text_layers),
        vision_config=vision_config,
        fusion=args.fusion,
        image_size=args.image_size,
        num_image_tokens=min(args.num_image_tokens, grid * grid),
        fusion_hidden_size=args.text_hidden,
        fusion_num_heads=max(1, args.text_hidden // 64),
        id2label={0: "not_hateful", 1: "hateful"},
    )
    torch.manual_seed(args.seed)
    MMFusionForClassification(config).save_pretrained(folder)
    MMFusionProcessor(default_image_processor(args.image_size), tokenizer).save_pretrained(folder)
    return folder


def make_inputs(args: argparse.Namespace, count: int) -> tuple[list[bytes], list[str]]:
    """Encoded PNG images (smooth colour gradients plus noise, like photos compress) and random captions."""
    rng = np.random.default_rng(args.seed + 1)
    side = args.source_image_size
    ramp = np.linspace(0, 1, side)
    images, captions = [], []
    for _ in range(count):
        colour = rng.uniform(0, 255, size=(2, 3))
        pixels = ramp[:, None, None] * colour[0] + (1 - ramp[None, :, None]) * colour[1]
        pixels = np.clip(pixels + rng.normal(0, 8, size=(side, side, 3)), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        images.append(buffer.getvalue())
        captions.append(" ".join(rng.choice(WORDS, size=args.caption_words)))
    return images, captions


def int8_accuracy(graphs: dict[str, tuple[Path, str]]) -> dict:
    """Each int8 model (name -> export folder, file) against ORT fp32 on the demo test split: label agreement, AUROC
    of both, and the change."""
    from mmfusion.data import load_image_text_dataset

    test_split = load_image_text_dataset("demo")["test"]
    results = {}
    for name, (folder, onnx_file) in graphs.items():
        evaluation = compare_int8_with_fp32(folder, "test", test_split, source="demo", int8_file=onnx_file)
        results[name] = {
            "label_agreement": evaluation["label_agreement"],
            "auroc_fp32": evaluation["fp32"]["auroc"],
            "auroc_int8": evaluation["int8"]["auroc"],
            "auroc_change": evaluation["metric_change"]["auroc"],
            "max_abs_probability_difference": evaluation["max_abs_probability_difference"],
        }
    return results


def time_call(function: Callable[[], object]) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def interleaved(calls: dict, runs: int, block: int) -> dict:
    """Seconds per call for each named call: `runs` timed calls each, in blocks of `block` calls, calls taking turns.

    Blocks rather than single calls: ONNX Runtime's and OpenMP's worker threads keep spinning for a moment after a
    call, which would slow whichever engine runs right after. Each block starts with one untimed call, so that
    leftover spinning (and any cache warm-up) costs nothing; taking turns spreads a noisy neighbour over all engines.
    """
    timings = {name: [] for name in calls}
    while any(len(values) < runs for values in timings.values()):
        for name, call in calls.items():
            call()  # untimed: see the docstring
            for _ in range(min(block, runs - len(timings[name]))):
                timings[name].append(time_call(call))
    return timings


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    import onnxruntime as ort

    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="mmfusion-bench-"))
    checkpoint = build_checkpoint(args, workdir / "checkpoint")
    targets = args.int8_targets or [int8_target()]
    export_dirs = {target: workdir / f"onnx-{target}" for target in targets}
    export_seconds = {}
    for target, folder in export_dirs.items():
        started = time.perf_counter()
        info = export_onnx(
            checkpoint,
            folder,
            quantize="int8-static",
            calibration="demo",
            calibration_size=args.calibration_size,
            int8_target=target,
        )
        export_seconds[target] = time.perf_counter() - started
    export_dir = export_dirs[targets[0]]  # fp32 and dynamic int8 (made for the first target) come from here
    int8_ops = None if args.int8_ops == "all" else args.int8_ops.split(",")
    quantize_int8(
        export_dir / ONNX_FILENAME,
        export_dir / DYNAMIC_INT8_FILENAME,
        op_types=int8_ops,
        reduce_range=int8_tuning(targets[0])["reduce_range"],
    )
    static_names = {target: "ORT int8 static" + (f" {target}" if len(targets) > 1 else "") for target in targets}
    accuracy = int8_accuracy(
        {
            **{static_names[target].removeprefix("ORT int8 "): (export_dirs[target], INT8_ONNX_FILENAME)
               for target in targets},
            "dynamic": (export_dir, DYNAMIC_INT8_FILENAME),
        }
    )  # fmt: skip

    session_options = default_session_options(args.threads)  # what the predictor uses, with the same thread count
    predictors = {
        "torch fp32": MMFusionPredictor.from_pretrained(checkpoint, device="cpu", batch_size=args.batch_size),
        "ORT fp32": MMFusionPredictor.from_pretrained(
            export_dir, backend="onnx", batch_size=args.batch_size, session_options=session_options
        ),
        **{
            static_names[target]: MMFusionPredictor.from_pretrained(
                folder,
                backend="onnx",
                onnx_file=INT8_ONNX_FILENAME,
                batch_size=args.batch_size,
                session_options=session_options,
            )
            for target, folder in export_dirs.items()
        },
        "ORT int8 dyn": MMFusionPredictor.from_pretrained(
            export_dir,
            backend="onnx",
            onnx_file=DYNAMIC_INT8_FILENAME,
            batch_size=args.batch_size,
            session_options=session_options,
        ),
    }
    images, captions = make_inputs(args, args.batch_size)
    processor = predictors["torch fp32"].processor
    processed = {
        kind: {size: processor(images=[Image.open(io.BytesIO(b)) for b in images[:size]], text=captions[:size],
                               return_tensors=kind) for size in (1, args.batch_size)}
        for kind in ("pt", "np")
    }  # fmt: skip

    def model_only(predictor: MMFusionPredictor, size: int) -> Callable[[], object]:
        inputs = processed[predictor.backend.return_tensors][size]
        return lambda: predictor.backend.logits(inputs)

    def end_to_end(predictor: MMFusionPredictor, size: int) -> Callable[[], object]:
        return lambda: predictor.predict_batch(images[:size], captions[:size])

    modes = (("model-only", model_only), ("end-to-end", end_to_end))

    # All six (engine, mode) pairs take turns in the same loop: a change of machine load mid-run hits them alike.
    calls = {(name, mode): make_call for name in predictors for mode, make_call in modes}
    latency = interleaved({key: make(predictors[key[0]], 1) for key, make in calls.items()}, args.latency_runs, 10)
    throughput = interleaved(
        {key: make(predictors[key[0]], args.batch_size) for key, make in calls.items()}, args.throughput_runs, 2
    )
    results = {"engines": {name: {} for name in predictors}, "accuracy": accuracy}
    for name, mode in calls:
        results["engines"][name][mode] = {
            "latency_p50_ms": 1000 * percentile(latency[name, mode], 50),
            "latency_p95_ms": 1000 * percentile(latency[name, mode], 95),
            "throughput_per_s": args.batch_size / statistics.median(throughput[name, mode]),
        }

    tokens = processed["pt"][args.batch_size]["input_ids"].shape[1]
    results["setup"] = {
        "date": date.today().isoformat(),
        "command": "python benchmarks/bench_inference.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "fusion": args.fusion,
        "text": f"BERT {args.text_layers} layers x {args.text_hidden}",
        "vision": f"{args.vision} at {args.image_size} px",
        "caption_tokens": int(tokens),
        "batch_size": args.batch_size,
        "threads": args.threads,
        "int8_ops": args.int8_ops,
        "int8_targets": targets,
        "this_cpus_int8_target": int8_target(),
        "cpu": describe_cpu(),  # model, threads and the flags int8/bf16 speed depend on (VNNI, AVX-512, AMX)
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "export_seconds": export_seconds,
        "export_max_abs_logit_difference": info.max_abs_logit_difference,
        "calibration": info.quantization["calibration"],
        "model_mb": {
            name: (export_dir / name).stat().st_size / 1e6
            for name in (ONNX_FILENAME, INT8_ONNX_FILENAME, DYNAMIC_INT8_FILENAME)
        },
    }
    print_table(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return results


def print_table(results: dict) -> None:
    setup = results["setup"]
    print(
        f"\n{setup['fusion']} fusion, {setup['text']}, {setup['vision']}, {setup['caption_tokens']} caption tokens; "
        f"{setup['threads']} threads; torch {setup['torch']}, onnxruntime {setup['onnxruntime']}; {setup['date']}"
    )
    print(f"CPU: {setup['cpu']}; int8 target of this CPU: {setup['this_cpus_int8_target']}")
    print("model files: " + ", ".join(f"{name} {size:.1f} MB" for name, size in setup["model_mb"].items()))
    baseline = results["engines"]["torch fp32"]
    header = (
        f"{'engine':<21} {'mode':<11} {'p50 ms (b=1)':>13} {'p95 ms (b=1)':>13} {'p50 speed-up':>13} "
        f"{'pairs/s (b=' + str(setup['batch_size']) + ')':>15} {'throughput speed-up':>20}"
    )
    print(header)
    print("-" * len(header))
    for mode in ("model-only", "end-to-end"):
        for name, engine in results["engines"].items():
            row, reference = engine[mode], baseline[mode]
            latency_ratio = reference["latency_p50_ms"] / row["latency_p50_ms"]
            throughput_ratio = row["throughput_per_s"] / reference["throughput_per_s"]
            print(
                f"{name:<21} {mode:<11} {row['latency_p50_ms']:>13.1f} {row['latency_p95_ms']:>13.1f} "
                f"{latency_ratio:>12.2f}x {row['throughput_per_s']:>15.1f} {throughput_ratio:>19.2f}x"
            )
    print(f"int8 vs ORT fp32 on the demo test split (calibration: {setup['calibration']}):")
    for name, row in results["accuracy"].items():
        print(
            f"  {name:<12} label agreement {row['label_agreement']:.2%}, AUROC {row['auroc_int8']:.4f} "
            f"(fp32 {row['auroc_fp32']:.4f}, change {row['auroc_change']:+.4f}), "
            f"max |probability difference| {row['max_abs_probability_difference']:.3f}"
        )


if __name__ == "__main__":
    main()
