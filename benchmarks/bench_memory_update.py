#!/usr/bin/env python
"""Update without retraining, measured: a kind of example left out of training is fixed by adding a few labelled
examples of it to the labelled memory, with no gradient step.

    python benchmarks/bench_memory_update.py [--seeds 0 1 2] [--added 20] [--json results/memory_update.json]

The demo data (`mmfusion/data/demo.py`): label = 1 when the caption's keyword contradicts the picture's colour
(warm picture + cold word, or cold picture + warm word). The **left-out kind** is one cue combination, warm picture +
cold word (hateful): every such row is removed from the training split, so the model only ever sees cold words on
benign memes and calls these test items benign. Then:

1. a tiny early-fusion model (the test suite's demo recipe, `train_demo_model`) is trained on the rest;
2. its memory is the training split embedded by it (what train.py builds);
3. **update**: `added` labelled examples of the left-out kind, from the validation split, are embedded by the frozen
   model and added to the memory (`model.add_to_memory`); no weight changes;
4. **controls**: the same queries with the memory left as it was, and with `added` labelled validation rows of the
   *other* kinds added instead (as many rows, none of the left-out kind): neither should fix the left-out kind.

Reported on the test split's items of the left-out kind (100 of 400) and on the whole test split: accuracy and mean
P(hateful) of the head, of kNN (k = 20) and of the mix at 0.5 and 0.75, before and after the update.
`tests/test_memory_update_measured.py` runs one seed and fails unless kNN on the left-out kind improves after the
update and not in the control.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mmfusion import MMFusionConfig, MMFusionForClassification, MMFusionProcessor, default_image_processor  # noqa: E402
from mmfusion.data import demo_cues, load_demo_dataset  # noqa: E402
from mmfusion.memory import combine_probabilities  # noqa: E402
from mmfusion.training.presets import small_text_config, small_vision_config  # noqa: E402
from mmfusion.training.tokenization import train_wordpiece_tokenizer  # noqa: E402

IMAGE_SIZE, MAX_LENGTH, HIDDEN = 32, 16, 32
KNN_K = 20


def left_out(image, text) -> bool:
    """The left-out kind: warm picture, cold keyword (a hateful combination)."""
    image_is_warm, text_is_warm = demo_cues(image, text)
    return image_is_warm and not text_is_warm


def train_demo_model(train, seed: int, max_steps: int = 1500):
    """The test suite's demo recipe (tests/conftest.py): tiny BERT, frozen random ResNet (features computed once),
    two label-smoothed auxiliary heads that predict each cue so both reach [CLS]; stops at 99 % training accuracy."""
    cues = torch.tensor([demo_cues(image, text) for image, text in zip(train["image"], train["text"])]).long()
    tokenizer = train_wordpiece_tokenizer(train["text"], vocab_size=200, model_max_length=MAX_LENGTH)
    processor = MMFusionProcessor(default_image_processor(IMAGE_SIZE), tokenizer)
    config = MMFusionConfig(
        text_config=small_text_config(
            len(tokenizer),
            hidden_size=HIDDEN,
            num_layers=2,
            num_attention_heads=4,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            max_position_embeddings=32,
        ),  # fmt: skip
        vision_config=small_vision_config(width=8, num_stages=3),
        fusion="early",
        num_image_tokens=1,
        image_size=IMAGE_SIZE,
        classifier_dropout=0.0,
        freeze_vision_encoder=True,
        id2label={0: "not_hateful", 1: "hateful"},
        knn_k=KNN_K,
    )
    torch.manual_seed(seed)
    model = MMFusionForClassification(config).eval()
    inputs = dict(processor(images=train["image"], text=train["text"], padding="max_length", max_length=MAX_LENGTH))
    with torch.no_grad():
        features = model.get_image_features(inputs.pop("pixel_values")).last_hidden_state
    labels = torch.tensor(train["label"])
    cue_heads = torch.nn.Linear(HIDDEN, 4)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad] + list(cue_heads.parameters()),
                                  lr=1e-3)  # fmt: skip
    generator = torch.Generator().manual_seed(seed)
    for step in range(1, max_steps + 1):
        model.train()
        batch = torch.randint(0, len(labels), (32,), generator=generator)
        outputs = model.mmfusion(**{k: v[batch] for k, v in inputs.items()}, image_features=features[batch])
        cue_logits = cue_heads(outputs.pooler_output)
        loss = (
            F.cross_entropy(model.classifier(outputs.pooler_output), labels[batch])
            + F.cross_entropy(cue_logits[:, :2], cues[batch, 0], label_smoothing=0.2)
            + 3.0 * F.cross_entropy(cue_logits[:, 2:], cues[batch, 1], label_smoothing=0.2)
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 100 == 0:
            model.eval()
            with torch.no_grad():
                logits = model(**inputs, image_features=features).logits
            if (logits.argmax(-1) == labels).float().mean() >= 0.99:
                break
    return model.eval(), processor, step


def scored(model, processor, split, mix_weights=(0.5, 0.75)) -> dict[str, np.ndarray]:
    """P(hateful) of the head, kNN and the mixes for every row of `split`, with the model's current memory."""
    with torch.no_grad():
        outputs = model(**processor(images=split["image"], text=split["text"]))
    head = outputs.logits.softmax(-1).numpy().astype(np.float64)
    embeddings = F.normalize(outputs.embeddings, dim=-1).numpy()
    knn_scores = model.memory.knn_scores(embeddings, KNN_K)
    found = {"head": head[:, 1], "knn": combine_probabilities(head, knn_scores, "knn", 0.0)[:, 1]}
    for weight in mix_weights:
        found[f"mix_{weight:g}"] = combine_probabilities(head, knn_scores, "mix", weight)[:, 1]
    return found


def figures(probabilities: dict[str, np.ndarray], labels: np.ndarray) -> dict[str, dict[str, float]]:
    return {
        mode: {"accuracy": float(((p >= 0.5) == labels).mean()), "mean_p_hateful": float(p.mean())}
        for mode, p in probabilities.items()
    }


def run(seed: int = 0, added: int = 20, max_steps: int = 1500) -> dict:
    """One seed of the experiment (see the module docstring); the figures as a dict."""
    dataset = load_demo_dataset()
    kind = {name: [left_out(i, t) for i, t in zip(dataset[name]["image"], dataset[name]["text"])] for name in dataset}
    train = dataset["train"].select([i for i, k in enumerate(kind["train"]) if not k])[:]
    test = dataset["test"][:]
    test_kind = np.array(kind["test"])
    new_rows = [i for i, k in enumerate(kind["validation"]) if k][:added]
    new = dataset["validation"].select(new_rows)[:]
    other = dataset["validation"].select([i for i, k in enumerate(kind["validation"]) if not k][:added])[:]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small only loses time to thread synchronisation
    try:
        started = time.perf_counter()
        model, processor, steps = train_demo_model(train, seed, max_steps)
        trained_s = time.perf_counter() - started
        weights = {name: tensor.clone() for name, tensor in model.state_dict().items()}
        memory = model.empty_memory()
        with torch.no_grad():
            train_embeddings = torch.cat([
                model.embed(**processor(images=train["image"][s : s + 256], text=train["text"][s : s + 256]))
                for s in range(0, len(train["id"]), 256)
            ])  # fmt: skip
        memory.add([str(i) for i in train["id"]], train_embeddings, train["label"], captions=train["text"])
        model.memory = memory
        labels = np.asarray(test["label"])
        before = scored(model, processor, test)
        control = scored(model, processor, test)  # the control: the same queries, the memory untouched
        model.memory = copy.deepcopy(memory)  # the other control: as many rows, of the other kinds
        model.add_to_memory([f"other-{i}" for i in other["id"]], other["label"],
                            **processor(images=other["image"], text=other["text"]))  # fmt: skip
        control_other = scored(model, processor, test)
        model.memory = memory
        started = time.perf_counter()
        model.add_to_memory([f"new-{i}" for i in new["id"]], new["label"], captions=new["text"],
                            **processor(images=new["image"], text=new["text"]))  # fmt: skip
        update_s = time.perf_counter() - started
        after = scored(model, processor, test)
        unchanged = all(torch.equal(weights[name], tensor) for name, tensor in model.state_dict().items())
    finally:
        torch.set_num_threads(threads)
    return {
        "seed": seed,
        "training_rows": len(train["id"]),
        "training_steps": steps,
        "training_seconds": round(trained_s, 1),
        "added": len(new_rows),
        "update_seconds": round(update_s, 3),
        "weights_unchanged": unchanged,
        "left_out_test_items": int(test_kind.sum()),
        "left_out": {
            "before": figures({m: p[test_kind] for m, p in before.items()}, labels[test_kind]),
            "control": figures({m: p[test_kind] for m, p in control.items()}, labels[test_kind]),
            "control_other_rows": figures({m: p[test_kind] for m, p in control_other.items()}, labels[test_kind]),
            "after": figures({m: p[test_kind] for m, p in after.items()}, labels[test_kind]),
        },
        "other_test_items": {
            "before": figures({m: p[~test_kind] for m, p in before.items()}, labels[~test_kind]),
            "after": figures({m: p[~test_kind] for m, p in after.items()}, labels[~test_kind]),
        },
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--added", type=int, default=20)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    results = [run(seed, args.added) for seed in args.seeds]
    for result in results:
        print(f"seed {result['seed']}: {result['training_rows']} training rows, {result['training_steps']} steps "
              f"({result['training_seconds']} s); added {result['added']} rows in {result['update_seconds']} s, "
              f"weights unchanged: {result['weights_unchanged']}")  # fmt: skip
        for part in ("left_out", "other_test_items"):
            for when, modes in result[part].items():
                shown = ", ".join(f"{m} {v['accuracy']:.3f} (P {v['mean_p_hateful']:.2f})" for m, v in modes.items())
                print(f"  {part:16s} {when:8s} accuracy: {shown}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
