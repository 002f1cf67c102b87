#!/usr/bin/env python
"""The embedding cache of the demo's 400 validation images computed by 1 process vs by 2 (`torchrun`), side by side.

Saves a randomly initialised CLIP-shaped dual encoder (as `bench_embedding_cache.py` does: no download) and, for each
run, in a fresh process (or 2) with a fresh cache, computes what train.py caches for cross fusion on both frozen
towers: tokens, text embeddings, image embeddings (`prepare_model_inputs`, steps 1-4 of train.py). Under torchrun
each process computes one share of the rows and reads the other's (`mmfusion.training.inputs._map_sharded`).

Timed: from a barrier after the model is built to the merged cache in every process (the slowest process), i.e. the
cache computation alone; the run's wall time (start-up, demo data, model) is printed beside it. The same cores in
both: 1 process with OMP_NUM_THREADS=2 (default) vs 2 processes with OMP_NUM_THREADS=1 each.

    python benchmarks/bench_sharded_cache.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PORT = "29541"


def worker(clip: str, output_dir: str) -> None:
    """One process of a run: train.py's steps 1-4, then the timed `prepare_model_inputs` of the validation split."""
    from transformers import set_seed

    from mmfusion.inference.sharding import is_main_process, launcher_state, main_process_first
    from mmfusion.training.arguments import parse_arguments
    from mmfusion.training.inputs import prepare_model_inputs
    from mmfusion.training.setup import build_model, build_processor, label_names_of, load_data, resolve_image_size

    towers = ["--text_model_name_or_path", clip, "--vision_model_name_or_path", clip]
    frozen = ["--fusion", "cross", "--freeze_text_encoder", "true", "--freeze_vision_encoder", "true"]
    model_args, data_args, training_args = parse_arguments(
        ["--dataset", "demo", *towers, *frozen, "--output_dir", output_dir, "--report_to", "none"]
    )
    state = launcher_state()
    with main_process_first(state):
        raw, _ = load_data(data_args)
    image_size = resolve_image_size(model_args)
    processor = build_processor(
        model_args, image_size, raw["train"]["text"], max_text_length=data_args.max_text_length
    )
    set_seed(0)
    model = build_model(model_args, label_names_of(raw), len(processor.tokenizer), image_size)
    if state is not None:
        state.wait_for_everyone()
    started = time.perf_counter()
    prepared = prepare_model_inputs(
        raw["validation"],
        processor,
        model,
        max_length=data_args.max_text_length,
        device=training_args.device,
        state=state,
    )
    elapsed = time.perf_counter() - started
    if state is not None:
        from accelerate.utils import gather_object

        elapsed = max(gather_object([elapsed]))
    if is_main_process(state):
        print(json.dumps({"cache_s": elapsed, "rows": len(prepared), "columns": prepared.column_names}), flush=True)
    if state is not None:
        state.destroy_process_group()


def run(clip: Path, processes: int) -> dict:
    threads = 2 // processes
    command = [sys.executable, __file__, "--worker", str(clip)]
    if processes > 1:
        command[1:1] = ["-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port", PORT]
    with tempfile.TemporaryDirectory() as cache:  # fresh demo data, datasets cache and inputs cache per run
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MMFUSION_CACHE": cache, "HF_DATASETS_CACHE": cache}
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
        command += ["--output-dir", str(Path(cache) / "out")]
        started = time.perf_counter()
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - started
    if result.returncode:
        raise SystemExit(result.stderr[-3000:])
    measured = json.loads([line for line in result.stdout.splitlines() if line.startswith("{")][-1])
    return {**measured, "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--text-layers", type=int, default=4)
    parser.add_argument("--vision-layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--output-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.output_dir)

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_embedding_cache import save_random_clip

    with tempfile.TemporaryDirectory() as work:
        clip = Path(work) / "clip"
        save_random_clip(clip, args)
        runs = {1: [], 2: []}
        for _ in range(args.repeats):  # interleaved: a slow spell of the machine hits both
            for processes in runs:
                runs[processes].append(run(clip, processes))
                print(f"{processes} process(es): {runs[processes][-1]}", file=sys.stderr, flush=True)
    print(
        f"cache of the demo's {runs[1][0]['rows']} validation rows ({', '.join(runs[1][0]['columns'])}): frozen random "
        f"CLIP ({args.text_layers}+{args.vision_layers} layers x {args.width}, 224 px, /32 patches), cross fusion; "
        f"medians of {args.repeats}"
    )
    print("| processes x threads | cache computation | all runs | wall of the run (start-up included) |")
    print("|---|---:|---|---:|")
    for processes, results in runs.items():
        times = [result["cache_s"] for result in results]
        walls = [result["wall_s"] for result in results]
        print(
            f"| {processes} x {2 // processes} | {statistics.median(times):.2f} s | "
            f"{', '.join(f'{t:.2f}' for t in times)} | {statistics.median(walls):.1f} s |"
        )
    speedup = statistics.median(r["cache_s"] for r in runs[1]) / statistics.median(r["cache_s"] for r in runs[2])
    print(f"1 process / 2 processes: {speedup:.2f}x")


if __name__ == "__main__":
    main()
