#!/usr/bin/env python
"""Training and evaluation throughput of mmfusion against the notebook's straightforward implementation.

Builds a Hateful-Memes-layout folder of photo-sized PNG memes (like ../shared/bench/make_memes.py), then trains and
evaluates our early-fusion (frozen vision tower: features cached once) and concat (tower trained: uint8 pixels cached
once) models with the same sizes, batch and epochs as the reference, and prints samples/s. Every run is a fresh
process with fresh caches. The training figure includes the one-time costs (building the dataset, caching the model
inputs), which are also reported alone; the learning time is the Trainer's own clock, as the reference reports it.
With --reference PATH, the reference script runs on the same data, interleaved with ours, and the ratios are printed.

    python benchmarks/bench_training.py --precision fp32 bf16 --repeats 7 --reference ../shared/bench/notebook_reference.py
    python benchmarks/bench_training.py --n 8500 --small-images --only early --epochs 1   # peak memory at full size

On a GPU use --precision bf16 and real sizes (--bert-layers 12 --bert-hidden 768 --batch 128 [--vision resnet50]);
it also prints model FLOPs utilisation.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

SPLITS = {"train": 1, "dev_seen": 8}  # split -> divisor of --n (the reference evaluates on dev_seen)


# ---------------------------------------------------------------------------------------------------------------------
# data: photo-like PNG memes (smooth colour field + shapes + caption), as the reference's make_memes.py writes them
def photo(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    gx, gy = np.linspace(0, 1, width)[None, :, None], np.linspace(0, 1, height)[:, None, None]
    base = rng.random(3) * 255 * (1 - gx) + rng.random(3) * 255 * gy
    image = Image.fromarray(np.clip(base + rng.normal(0, 6, (height, width, 3)), 0, 255).astype("uint8"))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(2, 6)):
        x0, y0 = rng.integers(0, width - 20), rng.integers(0, height - 20)
        color = tuple(int(c) for c in rng.integers(0, 255, 3))
        draw.ellipse([x0, y0, x0 + rng.integers(20, width // 2), y0 + rng.integers(20, height // 2)], fill=color)
    return image


def write_memes(root: Path, n: int, seed: int = 0, small: bool = False) -> Path:
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    for split, divisor in SPLITS.items():
        count = n if divisor == 1 else max(8, n // divisor)
        with (root / f"{split}.jsonl").open("w") as handle:
            for index in range(count):
                meme_id = f"{split[:2]}{index:05d}"
                text = f"synthetic caption number {index} for {split}"
                path = root / "img" / f"{meme_id}.png"
                if not path.exists():
                    low, high = (96, 160) if small else (400, 800)
                    image = photo(rng, int(rng.integers(low, high)), int(rng.integers(low, high)))
                    ImageDraw.Draw(image).text((10, 10), text[:60], fill=(255, 255, 255))
                    image.save(path)
                record = {"id": meme_id, "img": f"img/{meme_id}.png", "label": int(rng.integers(0, 2)), "text": text}
                handle.write(json.dumps(record) + "\n")
    return root


# ---------------------------------------------------------------------------------------------------------------------
# memory
def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def anonymous_rss_mib() -> float:
    """Resident memory not backed by a file: memory-mapped Arrow caches don't count (the OS can drop those pages)."""
    status = Path("/proc/self/status")
    if not status.exists():
        return float("nan")
    match = re.search(r"RssAnon:\s+(\d+) kB", status.read_text())
    return int(match[1]) / 1024 if match else float("nan")


class AnonymousMemoryPeak:
    """Polls RssAnon in a thread; the peak of the process's non-file memory."""

    def __init__(self, interval: float = 0.05):
        import threading

        self.peak, self.interval, self._stop = 0.0, interval, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, anonymous_rss_mib())
            time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


# ---------------------------------------------------------------------------------------------------------------------
# ours
def build(args, fusion: str, train_texts):
    from mmfusion import MMFusionConfig, MMFusionForClassification
    from mmfusion.torchvision_resnet import torchvision_resnet_config
    from mmfusion.training.arguments import ModelArguments
    from mmfusion.training.presets import resnet18_config, small_text_config
    from mmfusion.training.setup import build_processor

    # train.py's processor for a small random text tower: a vocabulary of 1,000 learnt from the captions, 224 px
    processor = build_processor(ModelArguments(tokenizer_vocab_size=1000), 224, train_texts)
    # BERT's own dropout/init here: the same model as the reference, only the pipeline differs
    text_config = small_text_config(
        len(processor.tokenizer),
        hidden_size=args.bert_hidden,
        num_layers=args.bert_layers,
        initializer_range=0.02,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
    )
    vision_config = resnet18_config() if args.vision == "resnet18" else torchvision_resnet_config(args.vision)
    config = MMFusionConfig(
        text_config=text_config,
        vision_config=vision_config,
        fusion=fusion,
        num_image_tokens=49,
        image_size=224,
        freeze_vision_encoder=fusion == "early",
        num_labels=2,
    )
    config._attn_implementation = "sdpa"
    return MMFusionForClassification(config), processor


def run_ours(args, data_dir: Path, fusion: str, precision: str, work: Path) -> dict:
    from transformers import Trainer, TrainingArguments

    from mmfusion.data import load_hateful_memes
    from mmfusion.training.collator import MMFusionCollator
    from mmfusion.training.inputs import prepare_model_inputs, training_autocast_dtype

    torch.manual_seed(0)
    work = work / f"{fusion}-{precision}"  # fresh caches for every run: each one pays its own one-time costs
    device = "cuda" if torch.cuda.is_available() else "cpu"
    started = time.perf_counter()
    with AnonymousMemoryPeak() as memory:
        # One-time preparation: build the dataset (reads and checks every row, decodes every image once) ...
        build_started = time.perf_counter()
        raw = load_hateful_memes(data_dir, cache_dir=work / "hf-cache")
        build_s = time.perf_counter() - build_started
        model, processor = build(args, fusion, raw["train"]["text"])
        model.to(device)
        training_args = TrainingArguments(
            output_dir=str(work / "out"),
            num_train_epochs=args.epochs,
            per_device_train_batch_size=args.batch,
            per_device_eval_batch_size=args.batch,
            learning_rate=5e-6 if fusion == "early" else 1e-4,
            lr_scheduler_type="cosine",
            warmup_steps=0.1,
            optim=args.optim,
            eval_strategy="no",
            save_strategy="no",
            logging_steps=10**6,
            report_to="none",
            disable_tqdm=True,
            remove_unused_columns=False,
            dataloader_num_workers=args.workers,
            dataloader_persistent_workers=args.workers > 0,
            dataloader_pin_memory=device == "cuda",
            bf16=precision == "bf16",
            use_cpu=device == "cpu",
            torch_compile=args.compile,
        )
        # ... then tokenize captions and compute the frozen tower's features (or resize images) once.
        cache_started = time.perf_counter()
        prepared = prepare_model_inputs(
            raw,
            processor,
            model,
            max_length=128,
            feature_batch_size=args.batch,
            autocast_dtype=training_autocast_dtype(training_args),
            cache_dir=work / "inputs",
        )
        caching_s = time.perf_counter() - cache_started
        trainer = Trainer(
            model=model,
            args=training_args,
            train_dataset=prepared["train"],
            eval_dataset=prepared["dev_seen"],
            data_collator=MMFusionCollator.for_processor(processor, pad_to_multiple_of=8 if device == "cuda" else 1),
        )
        # the Trainer's own clock, as the reference reports it (train_samples_per_second): from the first batch to
        # the last step, without building the optimizer and data loader
        learning_s = trainer.train().metrics["train_runtime"]
        # A cached dev_seen split evaluates in tens of milliseconds, where one scheduler hiccup swings a single
        # measurement several-fold: the median of a few evaluations of the same split.
        eval_samples_per_s = float(
            np.median([trainer.evaluate()["eval_samples_per_second"] for _ in range(args.eval_repeats)])
        )
    trained = len(prepared["train"]) * args.epochs
    # preparation covers train and dev_seen; the training figure carries the train split's share of it
    train_share = len(raw["train"]) / (len(raw["train"]) + len(raw["dev_seen"]))
    one_time_s = build_s + caching_s
    result = {
        "model": f"{fusion} {precision}",
        "image_inputs": "frozen-tower features" if model.config.freeze_vision_encoder else "uint8 pixels",
        "build_s": build_s,
        "caching_s": caching_s,
        "one_time_s": one_time_s,
        "learning_s": learning_s,
        "train_samples_per_s": trained / (learning_s + one_time_s * train_share),
        "train_samples_per_s_without_caching": trained / learning_s,
        "eval_samples_per_s": eval_samples_per_s,
        "peak_rss_mib": peak_rss_mib(),
        "peak_anonymous_rss_mib": memory.peak,
        "wall_s": time.perf_counter() - started,
    }
    if device == "cuda":
        result["mfu"] = model_flops_utilisation(model, prepared["train"], trained, learning_s)
    return result


def run_ours_in_subprocess(data_dir: Path, fusion: str, precision: str, work: Path) -> dict:
    """`run_ours` in a fresh process and folder, as the reference runs: no run inherits another's caches or memory."""
    run_dir = Path(tempfile.mkdtemp(dir=work, prefix="run-"))
    command = [sys.executable, __file__, *sys.argv[1:], "--data", str(data_dir), "--worker", fusion, precision]
    try:
        result = subprocess.run(command, capture_output=True, text=True, cwd=run_dir)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    if result.returncode != 0:
        raise RuntimeError(f"our {fusion} {precision} run failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def median_row(runs: list[dict]) -> dict:
    """Per-key medians of repeated runs of one configuration (numbers only; the rest from the first run)."""
    row = dict(runs[0])
    for key, value in runs[0].items():
        if isinstance(value, (int, float)):
            row[key] = float(np.median([run[key] for run in runs]))
    row["repeats"] = len(runs)
    return row


def model_flops_utilisation(model, train_split, samples: int, seconds: float) -> float:
    """6 * trainable-path parameters * tokens per sample (text + image tokens), against the GPU's bf16 peak."""
    text_tokens = float(np.mean(train_split["length"]))
    tokens = text_tokens + model.config.num_image_tokens
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    achieved = 6 * trainable * tokens * samples / seconds
    name = torch.cuda.get_device_name()
    peak = 989e12 if "H100" in name or "H200" in name else 312e12  # dense bf16: Hopper, else A100
    return achieved / peak


# ---------------------------------------------------------------------------------------------------------------------
def run_reference(script: Path, data_dir: Path, args, part: int) -> dict:
    command = [
        sys.executable,
        str(script),
        str(data_dir),
        "--part",
        str(part),
        "--n",
        str(args.n),
        "--batch",
        str(args.batch),
        "--epochs",
        str(args.epochs),
        "--bert-layers",
        str(args.bert_layers),
        "--bert-hidden",
        str(args.bert_hidden),
    ]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    match = re.search(r"train ([\d.]+) samples/s, eval ([\d.]+) samples/s", output)
    return {
        "model": f"reference part {part}",
        "train_samples_per_s": float(match[1]),
        "eval_samples_per_s": float(match[2]),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=128, help="training memes (dev_seen gets n/8)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--bert-layers", type=int, default=4)
    parser.add_argument("--bert-hidden", type=int, default=256)
    parser.add_argument("--vision", default="resnet18", help="resnet18 | resnet50 (shapes; random weights)")
    parser.add_argument("--only", choices=["early", "concat"], help="benchmark one of our models")
    parser.add_argument("--reference", type=Path, help="path to notebook_reference.py: run it side by side")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    parser.add_argument(
        "--precision",
        nargs="+",
        choices=["fp32", "bf16"],
        default=["fp32"],
        help="run our models once per precision (bf16: autocast, the Trainer's --bf16; on CPU it needs AVX512-BF16 "
        "or AMX to be fast)",
    )
    parser.add_argument(
        "--optim",
        default="adamw_torch_fused",
        help="our Trainer's optimizer (the reference: adamw_torch; the fused one is the same AdamW in one kernel)",
    )
    parser.add_argument(
        "--repeats", type=int, default=1, help="run every configuration this many times, interleaved; report medians"
    )
    parser.add_argument(
        "--eval-repeats", type=int, default=5, help="evaluate our models this many times; report the median"
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--small-images", action="store_true", help="96-160 px PNGs (fast to build; for memory)")
    parser.add_argument("--data", type=Path, help="reuse a folder built earlier")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--worker", nargs=2, metavar=("FUSION", "PRECISION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:  # one of our runs, started by run_ours_in_subprocess
        fusion, precision = args.worker
        print(json.dumps(run_ours(args, args.data, fusion, precision, Path.cwd())))
        return

    work = Path(tempfile.mkdtemp(prefix="mmfusion-bench-"))
    data_dir = args.data or work / "memes"
    started = time.perf_counter()
    write_memes(data_dir, args.n, small=args.small_images)
    print(f"benchmark data: {data_dir} ({args.n} train memes, built in {time.perf_counter() - started:.0f}s)")
    from mmfusion.training.precision import describe_cpu

    print(f"CPU: {describe_cpu()}")  # bf16 and int8 speed depend on these flags: read ratios beside them
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    rows = []
    for fusion, part in (("early", 2), ("concat", 1)):
        if args.only and fusion != args.only:
            continue
        ours = {precision: [] for precision in args.precision}
        references = []
        for _ in range(args.repeats):  # interleaved, so that a change in machine load hits every configuration
            for precision in args.precision:
                ours[precision].append(run_ours_in_subprocess(data_dir, fusion, precision, work))
            if args.reference:
                references.append(run_reference(args.reference, data_dir, args, part))
        for runs in ours.values():
            row = median_row(runs)
            if references:
                # median of the ratios within each repeat: each ratio compares runs made a minute apart
                for measure in ("train", "eval"):
                    ratios = [
                        run[f"{measure}_samples_per_s"] / ref[f"{measure}_samples_per_s"]
                        for run, ref in zip(runs, references)
                    ]
                    row[f"{measure}_ratio"] = float(np.median(ratios))
                    row[f"{measure}_ratios"] = ratios
            rows.append(row)
        if references:
            rows.append(median_row(references))

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    print(
        f"\n{device}; BERT {args.bert_layers}x{args.bert_hidden} + {args.vision}, {args.n} memes, batch "
        f"{args.batch}, {args.epochs} epochs"
    )
    header = (
        f"{'model':<18} {'train/s':>8} {'learning/s':>10} {'build s':>7} {'caching s':>9} {'eval/s':>8} {'train x':>7} "
        f"{'eval x':>7} {'peak RSS MiB':>12} {'anon MiB':>9} {'MFU':>6}"
    )
    print(header)
    for row in rows:

        def cell(key, fmt, width, row=row):
            return format(row[key], fmt).rjust(width) if key in row else "-".rjust(width)

        print(
            f"{row['model']:<18} {cell('train_samples_per_s', '.1f', 8)} "
            f"{cell('train_samples_per_s_without_caching', '.1f', 10)} {cell('build_s', '.1f', 7)} "
            f"{cell('caching_s', '.1f', 9)} "
            f"{cell('eval_samples_per_s', '.1f', 8)} {cell('train_ratio', '.2f', 7)} {cell('eval_ratio', '.2f', 7)} "
            f"{cell('peak_rss_mib', '.0f', 12)} {cell('peak_anonymous_rss_mib', '.0f', 9)} {cell('mfu', '.1%', 6)}"
        )
    if args.repeats > 1:
        print(f"(medians of {args.repeats} interleaved repeats; ratios: the median of the per-repeat ratios)")
        for row in rows:
            for measure in ("train", "eval"):
                if f"{measure}_ratios" in row:
                    listed = ", ".join(f"{ratio:.2f}" for ratio in row[f"{measure}_ratios"])
                    print(f"  {row['model']} {measure} x reference, per repeat: {listed}")
    if args.json:
        args.json.write_text(json.dumps({"device": device, "args": vars(args), "rows": rows}, indent=2, default=str))
    shutil.rmtree(work, ignore_errors=True)  # generated memes (unless --data), caches, outputs


if __name__ == "__main__":
    main()
