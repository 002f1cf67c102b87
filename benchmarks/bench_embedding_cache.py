#!/usr/bin/env python
"""Training throughput of cross fusion on frozen CLIP towers: embeddings cached once vs both towers run every step.

Saves a randomly initialised CLIP-shaped dual encoder (no download; `--text-layers`, `--vision-layers`, `--width`,
224 px images, 32 px patches like ViT-B/32) with a tokenizer learnt from the demo captions, then runs `train.py` on
the demo data twice, each in a fresh process with a fresh cache, with both towers frozen and `--fusion cross`:

- cached: train.py's default, text and image embeddings computed once (`text_embeds`, `image_embeds`);
- uncached: `--cache_image_features false --cache_text_embeddings false`, both towers run on every step.

It prints the Trainer's own samples/s (learning only), the run's wall time (one-time costs included) and the ratio.

    OMP_NUM_THREADS=2 python benchmarks/bench_embedding_cache.py --train-samples 512 --epochs 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def save_random_clip(folder: Path, args) -> None:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from mmfusion.data import load_image_text_dataset
    from mmfusion.training.tokenization import train_wordpiece_tokenizer

    captions = load_image_text_dataset("demo")["train"]["text"]
    tokenizer = train_wordpiece_tokenizer(captions, vocab_size=1000)
    tokenizer.model_max_length = 77
    common = dict(intermediate_size=4 * args.width, hidden_size=args.width, num_attention_heads=args.width // 64)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            num_hidden_layers=args.text_layers,
            max_position_embeddings=77,
            eos_token_id=tokenizer.sep_token_id,  # CLIP pools the first end-of-text token
            pad_token_id=tokenizer.pad_token_id,
            **common,
        ),
        vision_config=dict(num_hidden_layers=args.vision_layers, image_size=224, patch_size=32, **common),
        projection_dim=args.width,
    )
    CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    CLIPImageProcessor().save_pretrained(folder)  # CLIP's mean/std


def run(folder: Path, output: Path, cached: bool, args) -> dict:
    command = [
        sys.executable,
        str(REPO / "train.py"),
        "--text_model_name_or_path",
        str(folder),
        "--vision_model_name_or_path",
        str(folder),
        "--fusion",
        "cross",
        "--freeze_text_encoder",
        "true",
        "--freeze_vision_encoder",
        "true",
        "--max_train_samples",
        str(args.train_samples),
        "--max_eval_samples",
        "64",
        "--num_train_epochs",
        str(args.epochs),
        "--per_device_train_batch_size",
        "64",
        "--learning_rate",
        "1e-4",
        "--weight_decay",
        "1e-4",
        "--eval_strategy",
        "no",
        "--save_strategy",
        "no",
        "--load_best_model_at_end",
        "false",
        "--do_predict",
        "false",
        "--disable_tqdm",
        "true",
        "--report_to",
        "none",
        "--output_dir",
        str(output),
    ]
    if not cached:
        command += ["--cache_image_features", "false", "--cache_text_embeddings", "false"]
    with tempfile.TemporaryDirectory() as cache:  # a fresh inputs cache and datasets cache per run
        env = {"MMFUSION_CACHE": cache, "HF_DATASETS_CACHE": cache}
        started = time.perf_counter()
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env={**os.environ, **env})
        wall = time.perf_counter() - started
    if result.returncode:
        raise SystemExit(result.stderr[-3000:])
    results = json.loads((output / "all_results.json").read_text())
    return {"train_samples_per_second": results["train_samples_per_second"], "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-samples", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--text-layers", type=int, default=4)
    parser.add_argument("--vision-layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        save_random_clip(work / "clip", args)
        rows = {name: run(work / "clip", work / name, name == "cached", args) for name in ("cached", "uncached")}
    print(
        f"cross fusion, frozen random CLIP ({args.text_layers}+{args.vision_layers} layers x {args.width}, 224 px, "
        f"/32 patches), {args.train_samples} training examples x {args.epochs} epochs, batch 64"
    )
    print("| inputs | train samples/s (learning only) | wall of the run (one-time costs included) |")
    print("|---|---:|---:|")
    for name, row in rows.items():
        print(f"| {name} | {row['train_samples_per_second']:.1f} | {row['wall_s']:.1f} s |")
    ratio = rows["cached"]["train_samples_per_second"] / rows["uncached"]["train_samples_per_second"]
    print(f"cached / uncached training throughput: {ratio:.1f}x")


if __name__ == "__main__":
    main()
