"""The model-input cache computed by 2 processes (torchrun, CPU, gloo): each process runs the towers on its own share
of the rows only, and every process ends up with the one-process cache, row for row and value for value.

Run as a script, this file is what each launched process runs: `compute` on a meme folder twice (the second time
from the cache), then on the cache a single process filled; results pickled per rank.
"""

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

# One launch covers every map prepare_model_inputs shards: tokens and frozen-tower feature maps; text and image
# embeddings (both towers frozen); resized uint8 pixels (a trained vision tower).
CONFIGS = {
    "features": dict(fusion="early", freeze_vision_encoder=True),
    "embeddings": dict(fusion="concat", freeze_vision_encoder=True, freeze_text_encoder=True),
    "pixels": dict(fusion="early"),
}
SPLIT_ROWS = {"train": 150, "dev": 20, "test": 20}


def compute(data_dir: Path, cache: Path, state=None) -> dict:
    """prepare_model_inputs for each config (sharded with `state`), with the rows each tower saw in this process."""
    from tiny_models import tiny_model, tiny_processor

    from mmfusion.data import load_hateful_memes
    from mmfusion.inference.sharding import main_process_first
    from mmfusion.training.inputs import prepare_model_inputs

    with main_process_first(state):
        raw = load_hateful_memes(data_dir, cache_dir=cache / "hf")
    processor = tiny_processor()
    results = {}
    for name, overrides in CONFIGS.items():
        torch.manual_seed(0)  # the same towers in every process
        model = tiny_model(**overrides).eval()
        rows = {"vision": count_rows(model.base_model.vision_model), "text": count_rows(model.base_model.text_model)}
        prepared = prepare_model_inputs(raw, processor, model, state=state)
        results[name] = {
            "rows": {key: counter[0] for key, counter in rows.items()},
            "splits": {
                split: {"fingerprint": data._fingerprint, "num_files": len(data.cache_files), "columns": data[:]}
                for split, data in prepared.items()
            },
        }
    return results


def count_rows(tower: torch.nn.Module) -> list[int]:
    """A counter of the rows (batch entries) `tower` runs on from now on."""
    counter = [0]

    def count(module, args, kwargs):
        counter[0] += next(iter([*args, *kwargs.values()])).shape[0]

    tower.register_forward_pre_hook(count, with_kwargs=True)
    return counter


def assert_same_columns(got: dict, expected: dict, where: str):
    assert sorted(got) == sorted(expected), where
    for column, values in expected.items():
        assert len(got[column]) == len(values), (where, column)
        for row, (a, b) in enumerate(zip(got[column], values)):
            # exact: every batch is the batch one process runs (shares are whole batches), so the same floats
            assert np.array_equal(np.asarray(a), np.asarray(b)), f"{where}: column {column!r} differs at row {row}"


def launch(repo_root: Path, data_dir: Path, cache: Path, single_cache: Path, out: Path):
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "PYTHONPATH": os.pathsep.join([str(repo_root), str(repo_root / "tests")]),
    }
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29541",
               __file__, str(data_dir), str(cache), str(single_cache), str(out)]  # fmt: skip
    result = subprocess.run(command, cwd=repo_root, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    # per rank: [first pass, second pass, pass on the one-process cache]
    return [pickle.loads((out / f"rank{rank}.pkl").read_bytes()) for rank in (0, 1)]


def test_two_processes_each_encode_their_share_and_read_the_one_process_cache(repo_root, tmp_path):
    from mmfusion.data import make_demo_folder

    data_dir = Path(
        make_demo_folder(
            tmp_path / "memes",
            seed=4,
            num_train=SPLIT_ROWS["train"],
            num_validation=SPLIT_ROWS["dev"],
            num_test=SPLIT_ROWS["test"],
        )
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each launched process computes
    try:
        single = compute(data_dir, tmp_path / "single")
    finally:
        torch.set_num_threads(threads)
    first, second, on_single = zip(
        *launch(repo_root, data_dir, tmp_path / "two", tmp_path / "single", tmp_path / "out")
    )

    for rank, result in enumerate(first):
        for name, config in single.items():
            for split, expected in config["splits"].items():
                got = result[name]["splits"][split]
                assert_same_columns(got["columns"], expected["columns"], f"rank {rank}, {name}, {split}")
                # keyed as one process keys it, so the maps after it (and training) see the same dataset
                assert got["fingerprint"] == expected["fingerprint"]
        # train (150 rows) was cached as 2 share files, read by both processes
        assert result["features"]["splits"]["train"]["num_files"] == 2

    # Each process ran the towers on its share only. Shares are whole batches, in order (images: 32 a batch, captions:
    # 64): train's 5 image batches split 3 + 2 (96 + 54 rows), its 3 caption batches 2 + 1 (128 + 22); a split of
    # 20 rows is one batch, rank 0's. One blank image per split and config goes through the vision tower on every
    # process (it finds the features' shape).
    blanks = len(SPLIT_ROWS)
    total = sum(SPLIT_ROWS.values())
    for name in ("features", "embeddings"):
        assert single[name]["rows"]["vision"] == total + blanks
        assert [result[name]["rows"]["vision"] for result in first] == [96 + 40 + blanks, 54 + blanks]
    assert single["embeddings"]["rows"]["text"] == total
    assert [result["embeddings"]["rows"]["text"] for result in first] == [128 + 40, 22]

    # The second pass (new towers, same weights) finds every share in the cache, and a pass over the one-process
    # cache takes it as it is: no tower runs but for the blank images.
    for result in (*second, *on_single):
        assert {name: config["rows"] for name, config in result.items()} == {
            "features": {"vision": blanks, "text": 0},
            "embeddings": {"vision": blanks, "text": 0},
            "pixels": {"vision": 0, "text": 0},
        }
        for split, expected in single["embeddings"]["splits"].items():
            assert_same_columns(result["embeddings"]["splits"][split]["columns"], expected["columns"], split)
    for result in on_single:  # the one-process file itself, not shares
        assert result["features"]["splits"]["train"]["num_files"] == 1


if __name__ == "__main__":
    from mmfusion.inference.sharding import launcher_state

    data_dir, cache, single_cache, out = map(Path, sys.argv[1:5])
    state = launcher_state()
    passes = [compute(data_dir, directory, state) for directory in (cache, cache, single_cache)]
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{state.process_index}.pkl").write_bytes(pickle.dumps(passes))
    state.destroy_process_group()  # before teardown, where gloo's threads can abort a finished run
