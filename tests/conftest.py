import os
from pathlib import Path

import pytest
import torch

# pytest-xdist runs one worker per core (`-n auto`), and each worker, and each train.py it starts, would otherwise use
# every core: on 2 cores, two trainings with 2 threads each took 4x the time of two with 1 thread each (OpenMP
# threads spin while they wait for a core). Each worker gets its share of the cores, and passes it on through
# OMP_NUM_THREADS to the processes it starts; a value the user set is kept.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


# --- Inference tests (test_predict.py, test_onnx.py, test_app.py) -----------------------------------------------------


class TrainedDemoCheckpoint:
    """A small early-fusion model trained on the demo dataset, saved as a checkpoint.

    Attributes: `path` (checkpoint folder), `validation_accuracy`, `dataset` (the demo `DatasetDict`).
    """

    def __init__(self, path: Path, validation_accuracy: float, dataset):
        self.path = path
        self.validation_accuracy = validation_accuracy
        self.dataset = dataset


@pytest.fixture(scope="session")
def trained_demo_checkpoint(tmp_path_factory) -> TrainedDemoCheckpoint:
    """Train a tiny early-fusion model on the demo task (label = XOR of an image cue and a caption cue) in ~10 s.

    Recipe, and why:
    - 32 px images, tiny towers (`tests/tiny_models.py`), one image token; the random vision tower is frozen and its
      features computed once (the colour cue survives a random CNN), so each step only runs the small text encoder.
    - Neither cue alone predicts an XOR label, so at initialisation the label loss gives neither cue a gradient and
      training sits on a plateau for a random number of epochs; and whichever cue [CLS] picks up first saturates the
      pooler and blocks the other. Two small auxiliary heads on the pooled output predict each cue (from
      `mmfusion.data.demo_cues`), label-smoothed so they cannot saturate it: both cues reach [CLS] within a few
      hundred steps and the classifier learns the XOR from the labels. The heads are thrown away.
    - Stops once validation accuracy reaches 98 % (checked every 100 steps), at most 1500 steps.
    """
    import torch.nn.functional as F
    from tiny_models import tiny_config

    from mmfusion import MMFusionForClassification, MMFusionProcessor, default_image_processor
    from mmfusion.data import demo_cues, load_demo_dataset
    from mmfusion.training.tokenization import train_wordpiece_tokenizer

    image_size, max_length, hidden = 32, 16, 32
    dataset = load_demo_dataset()
    train, validation = dataset["train"][:], dataset["validation"][:]
    cues = torch.tensor([demo_cues(image, text) for image, text in zip(train["image"], train["text"])]).long()
    tokenizer = train_wordpiece_tokenizer(train["text"], vocab_size=200, model_max_length=max_length)
    processor = MMFusionProcessor(default_image_processor(image_size), tokenizer)
    label_names = dataset["train"].features["label"].names
    config = tiny_config(
        "early",
        text_config=dict(
            model_type="bert",
            vocab_size=len(tokenizer),
            hidden_size=hidden,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=2 * hidden,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            max_position_embeddings=32,
        ),
        num_image_tokens=1,
        freeze_vision_encoder=True,
        id2label=dict(enumerate(label_names)),
    )

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small only loses time to thread synchronisation
    try:
        torch.manual_seed(0)
        model = MMFusionForClassification(config).eval()

        def encode(split):
            inputs = processor(images=split["image"], text=split["text"], padding="max_length", max_length=max_length)
            with torch.no_grad():
                features = model.get_image_features(inputs.pop("pixel_values")).last_hidden_state
            return dict(inputs), features, torch.tensor(split["label"])

        (train_inputs, train_features, train_labels) = encode(train)
        (val_inputs, val_features, val_labels) = encode(validation)
        cue_heads = torch.nn.Linear(hidden, 4)  # [image cue logits (2), caption cue logits (2)]
        trainable = [p for p in model.parameters() if p.requires_grad] + list(cue_heads.parameters())
        optimizer = torch.optim.AdamW(trainable, lr=1e-3)
        generator = torch.Generator().manual_seed(0)
        validation_accuracy = 0.0
        for step in range(1, 1501):
            model.train()
            batch = torch.randint(0, len(train_labels), (32,), generator=generator)
            inputs = {name: tensor[batch] for name, tensor in train_inputs.items()}
            outputs = model.mmfusion(**inputs, image_features=train_features[batch])
            logits = model.classifier(outputs.pooler_output)
            cue_logits = cue_heads(outputs.pooler_output)
            loss = (
                F.cross_entropy(logits, train_labels[batch])
                + F.cross_entropy(cue_logits[:, :2], cues[batch, 0], label_smoothing=0.2)
                + 3.0 * F.cross_entropy(cue_logits[:, 2:], cues[batch, 1], label_smoothing=0.2)
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step % 100 == 0:
                model.eval()
                with torch.no_grad():
                    predicted = model(**val_inputs, image_features=val_features).logits.argmax(-1)
                validation_accuracy = (predicted == val_labels).float().mean().item()
                if validation_accuracy >= 0.98:
                    break
    finally:
        torch.set_num_threads(threads)
    if validation_accuracy < 0.9:
        pytest.fail(f"The demo model did not learn the demo task: validation accuracy {validation_accuracy:.3f}")
    path = tmp_path_factory.mktemp("trained-demo-early-fusion")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return TrainedDemoCheckpoint(path, validation_accuracy, dataset)


@pytest.fixture(scope="session")
def tiny_memes_folder(tmp_path_factory) -> Path:
    """A small Hateful-Memes-layout folder (demo rule, 32 px-friendly PNGs) with an unlabeled `test_unseen` split."""
    import json

    from mmfusion.data import make_demo_folder

    root = Path(
        make_demo_folder(
            tmp_path_factory.mktemp("memes") / "data", seed=3, num_train=48, num_validation=16, num_test=16
        )
    )
    rows = [json.loads(line) for line in (root / "test.jsonl").read_text().splitlines()]
    with (root / "test_unseen.jsonl").open("w") as handle:
        for row in rows[:10]:
            handle.write(json.dumps({"id": row["id"], "img": row["img"], "text": row["text"]}) + "\n")
    return root


TINY_TRAIN_ARGS = [
    "--small_text_hidden_size",
    "32",
    "--small_text_layers",
    "1",
    "--small_vision_width",
    "8",
    "--small_vision_stages",
    "2",
    "--image_size",
    "32",
    "--tokenizer_vocab_size",
    "200",
    "--per_device_train_batch_size",
    "16",
    "--per_device_eval_batch_size",
    "32",
    "--disable_tqdm",
    "true",
    "--dataloader_num_workers",
    "0",
    "--logging_steps",
    "1",
]


@pytest.fixture(scope="session")
def tiny_train_args() -> list[str]:
    return list(TINY_TRAIN_ARGS)
