#!/usr/bin/env python
"""`mmfusion-predict` over a folder of memes by 1 process vs 2 (`accelerate launch` with `cpu_ddp.yaml`), side by side.

Saves the randomly initialised realistic-size model of `bench_inference.py` (BERT 4 layers x 256 + resnet18-shaped
tower at 224 px, early fusion; no download), writes a Hateful-Memes-layout folder of photo-sized PNG memes (as
`bench_training.py` does), and predicts its train split with the PyTorch backend:

- 1 process with a thread per core against 2 processes with half the cores each (OMP_NUM_THREADS), so both use the
  same cores; the settings alternate, `--repeats` times each, so a slow spell of the machine hits both;
- every run is a fresh process (or 2) reading the same `datasets` cache, built once before the timed runs (building
  it is the same work in both settings: the main process does it, the others wait and read it);
- timed: the command's wall time, start-up included (what a user waits for);
- each run's CSV is compared byte for byte with the first single-process one.

    python benchmarks/bench_sharded_prediction.py --n 800 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mmfusion.parallel import usable_cpu_count

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))


def predict_command(checkpoint: Path, memes: Path, cache: Path, output: Path, processes: int) -> list[str]:
    arguments = [str(checkpoint), "--input", str(memes), "--split", "train", "--output", str(output),
                 "--cache-dir", str(cache), "--no-progress"]  # fmt: skip
    if processes == 1:
        return [sys.executable, "-m", "mmfusion.inference.predict", *arguments]
    # cpu_ddp.yaml: accelerate's torchrun launcher; a plain `--num_processes 2` starts one process without GPUs
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                str(REPO / "configs" / "accelerate" / "cpu_ddp.yaml"), "--num_processes", str(processes),
                "--main_process_port", "29543"]  # fmt: skip
    return [*launcher, "-m", "mmfusion.inference.predict", *arguments]


def threads_per_process(processes: int) -> int:
    return max(1, usable_cpu_count() // processes)  # both settings on the same cores


def run(command: list[str], processes: int) -> float:
    """The command's wall time; stops unless it ran and that many processes shared the rows."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads_per_process(processes))}
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if result.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    if (processes > 1) != (f"predicted by {processes} processes" in result.stderr):
        raise SystemExit(f"{' '.join(command)} did not run as {processes} process(es):\n{result.stderr[-3000:]}")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=800, help="memes in the predicted train split")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", help="keep the checkpoint, memes and outputs here (default: a temporary folder)")
    args = parser.parse_args()

    from bench_inference import build_checkpoint
    from bench_inference import parse_args as model_options
    from bench_training import write_memes

    from mmfusion.training.precision import describe_cpu

    print(f"CPU: {describe_cpu()}; {usable_cpu_count()} usable cores", flush=True)
    with tempfile.TemporaryDirectory() as temporary:
        work = Path(args.workdir or temporary)
        work.mkdir(parents=True, exist_ok=True)
        checkpoint = build_checkpoint(model_options([]), work / "checkpoint")
        memes = write_memes(work / "memes", args.n)
        cache = work / "cache"
        reference = work / "predictions_reference.csv"
        build = run(predict_command(checkpoint, memes, cache, reference, 1), 1)
        print(f"untimed first run (builds the datasets cache): {build:.1f} s", file=sys.stderr, flush=True)

        walls, identical = {1: [], 2: []}, {1: [], 2: []}
        for repeat in range(args.repeats):
            for processes in walls:
                output = work / f"predictions_{processes}_{repeat}.csv"
                walls[processes].append(run(predict_command(checkpoint, memes, cache, output, processes), processes))
                identical[processes].append(output.read_bytes() == reference.read_bytes())
                print(f"{processes} process(es): {walls[processes][-1]:.1f} s", file=sys.stderr, flush=True)

    print(
        f"mmfusion-predict, PyTorch backend, {args.n} PNG memes (400-800 px), batch 32, random early-fusion model "
        f"(BERT 4 x 256 + resnet18 at 224 px); wall time with start-up, medians of {args.repeats}"
    )
    print("| processes x threads | wall, median | all runs | memes/s (wall) | CSV byte-identical to 1 process |")
    print("|---|---:|---|---:|---|")
    for processes, times in walls.items():
        median = statistics.median(times)
        print(
            f"| {processes} x {threads_per_process(processes)} | {median:.1f} s | {', '.join(f'{t:.1f}' for t in times)} | "
            f"{args.n / median:.1f} | {'yes' if all(identical[processes]) else 'NO'} |"
        )
    ratios = [one / two for one, two in zip(walls[1], walls[2])]
    print(f"1 process / 2 processes, per repeat: {', '.join(f'{r:.2f}' for r in ratios)}; "
          f"median {statistics.median(ratios):.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
