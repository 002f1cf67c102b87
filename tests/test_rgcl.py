"""RGCL's training objective (`mmfusion.training.rgcl`): the miner on hand-made embeddings, the loss against a hand
computation, a Trainer run whose contrastive loss falls, and the refusals."""

import json
import math

import datasets
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny_models import tiny_config, tiny_model
from torch.testing import assert_close
from transformers import TrainingArguments

from mmfusion.fusions import fusion_names
from mmfusion.retrieval import VectorIndex, faiss
from mmfusion.training.collator import MMFusionCollator
from mmfusion.training.columns import IMAGE_EMBEDS, TEXT_EMBEDS
from mmfusion.training.rgcl import MISSING, RGCLTrainer, mine_pairs, rgcl_loss

SEARCHES = [False, True] if faiss is not None else [False]


def unit(*rows):
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1).numpy()


@pytest.mark.parametrize("use_faiss", SEARCHES)
def test_hard_negative_is_the_nearest_of_another_class_and_pseudo_gold_the_nearest_of_its_own(use_faiss):
    # positions:         0         1           2          3           4
    vectors = unit([1, 0], [0.9, 0.1], [0.8, 0.3], [0.6, 0.6], [-1, 0])
    labels = np.array([0, 0, 1, 2, 1])
    index = VectorIndex(vectors, use_faiss=use_faiss)
    hard, gold = mine_pairs(index, labels, vectors[[0, 2]], labels[[0, 2]], [0, 2], k=4)
    # query 0 (class 0): neighbours 1 (class 0), 2 (class 1), 3 (class 2), 4
    assert hard.tolist()[0] == 2 and labels[hard[0]] != 0
    assert gold.tolist()[0] == 1
    # query 2 (class 1): neighbours 1 (class 0) nearer than 3 (class 2), own class only at 4 (the far side)
    assert hard.tolist()[1] == 1
    assert gold.tolist()[1] == 4


@pytest.mark.parametrize("use_faiss", SEARCHES)
def test_a_query_never_retrieves_itself_even_among_exact_duplicates(use_faiss):
    """Six identical vectors of class 0: each query's pseudo-gold is another of them, never its own position, and
    with k=1 the one kept neighbour is always someone else."""
    vectors = unit(*([[0.3, 0.7]] * 6), [1, 0], [0, 1])
    labels = np.array([0] * 6 + [1, 1])
    index = VectorIndex(vectors, use_faiss=use_faiss)
    positions = np.arange(6)
    for k in (1, 3, 7):
        hard, gold = mine_pairs(index, labels, vectors[:6], labels[:6], positions, k=k)
        assert (gold != positions).all() and (gold != MISSING).all() and (gold < 6).all()
    # k = 5: the 5 other duplicates fill the k nearest others, so no hard negative is within reach
    hard, _ = mine_pairs(index, labels, vectors[:6], labels[:6], positions, k=5)
    assert (hard == MISSING).all()


@pytest.mark.parametrize("use_faiss", SEARCHES)
def test_a_class_absent_from_the_neighbours_is_masked(use_faiss):
    vectors = unit([1, 0], [0.9, 0.2], [0.7, 0.7])
    labels = np.array([0, 0, 0])
    index = VectorIndex(vectors, use_faiss=use_faiss)
    # every stored example has class 0: a class-0 query has no hard negative
    hard, gold = mine_pairs(index, labels, vectors[:1], labels[:1], [0], k=2)
    assert hard.tolist() == [MISSING] and gold.tolist() == [1]
    # a query of a class nobody else has: no pseudo-gold, the nearest other is its hard negative
    hard, gold = mine_pairs(index, np.array([1, 0, 0]), vectors[:1], [1], [0], k=2)
    assert hard.tolist() == [1] and gold.tolist() == [MISSING]
    # a lone example (the index holds only itself): neither
    hard, gold = mine_pairs(VectorIndex(vectors[:1], use_faiss=use_faiss), labels[:1], vectors[:1], [0], [0], k=3)
    assert hard.tolist() == [MISSING] and gold.tolist() == [MISSING]


def test_loss_matches_a_hand_computation():
    embeddings = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1, 0, 2])
    hard = F.normalize(torch.tensor([[0.6, 0.8], [1.0, 0.0], [0.0, 0.0], [-1.0, 0.0]]), dim=-1)
    gold = F.normalize(torch.tensor([[0.8, 0.6], [0.0, 0.0], [1.0, 0.0], [0.0, 0.0]]), dim=-1)
    has_hard = torch.tensor([True, True, False, True])
    has_gold = torch.tensor([True, False, True, False])
    margin = 0.1

    def cos(a, b):
        a, b = a.tolist(), b.tolist()
        return sum(x * y for x, y in zip(a, b)) / math.hypot(*a) / math.hypot(*b)

    expected = []
    for i in range(4):
        others = [j for j in range(4) if labels[j] != labels[i]]
        in_batch = sum(cos(embeddings[i], embeddings[j]) for j in others) / len(others)
        hard_term = cos(embeddings[i], hard[i]) if has_hard[i] else 0.0
        gold_term = cos(embeddings[i], gold[i]) if has_gold[i] else 0.0
        expected.append(max(0.0, in_batch + hard_term - gold_term + margin))
    got = rgcl_loss(embeddings, labels, hard, has_hard, gold, has_gold, margin)
    assert got.item() == pytest.approx(sum(expected) / 4, abs=1e-6)


def test_an_example_with_nothing_to_compare_is_left_out_of_the_mean():
    """One class in the batch, no mined neighbour for example 1: its loss would be the bare margin."""
    embeddings = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0])
    hard = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    gold = torch.tensor([[0.6, 0.8], [0.0, 0.0]])
    found = torch.tensor([True, False])
    got = rgcl_loss(embeddings, labels, hard, found, gold, found, 0.8)
    assert got.item() == pytest.approx(0.0 + 0.0 - 0.6 + 0.8, abs=1e-6)  # example 0 alone, not (0.2 + 0.8) / 2
    none = torch.zeros(2, dtype=torch.bool)
    assert rgcl_loss(embeddings, labels, hard, none, gold, none, 0.8).item() == 0.0


def cached_embedding_dataset(model, size=16, seed=0, num_labels=2):
    """What train.py prepares with frozen towers: one text and one image embedding per row, and the label."""
    generator = torch.Generator().manual_seed(seed)
    config = model.config
    rows = {
        TEXT_EMBEDS: torch.randn(size, config.text_embed_dim, generator=generator).numpy(),
        IMAGE_EMBEDS: torch.randn(size, config.image_embed_dim, generator=generator).numpy(),
        "label": [index % num_labels for index in range(size)],
    }
    return datasets.Dataset.from_dict(rows).with_format("numpy", dtype=None)


def rgcl_trainer(model, dataset, output_dir, **overrides):
    values = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=len(dataset),
        per_device_eval_batch_size=len(dataset),
        learning_rate=1e-3,
        max_steps=30,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        remove_unused_columns=False,
        use_cpu=True,
        disable_tqdm=True,
    )
    values.update(overrides)
    return RGCLTrainer(
        model=model, args=TrainingArguments(**values), train_dataset=dataset, data_collator=MMFusionCollator(0)
    )


def test_a_trainer_run_on_a_fixed_batch_lowers_the_rgcl_loss(tmp_path):
    """align (RGCL's head) on cached embeddings, 3 classes, gradient accumulation, the index rebuilt every 5 steps:
    the contrastive term falls, and so does the classification term it is trained beside."""
    torch.manual_seed(0)
    model = tiny_model("align", num_labels=3, objective="rgcl", rgcl_k=4, rgcl_refresh_steps=5)
    dataset = cached_embedding_dataset(model, size=24, num_labels=3)
    trainer = rgcl_trainer(model, dataset, tmp_path, per_device_train_batch_size=12, gradient_accumulation_steps=2)
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "rgcl_loss" in entry]
    assert len(logs) == 30
    first, last = logs[0], logs[-1]
    assert last["rgcl_loss"] < 0.5 * first["rgcl_loss"], (first, last)
    assert last["ce_loss"] < first["ce_loss"], (first, last)
    assert trainer.index_step == 25  # rebuilt at steps 0, 5, ..., 25
    assert len(trainer.training_index.vectors) == 24


def test_the_index_follows_the_model_at_each_epoch_start(tmp_path):
    """Unset `rgcl_refresh_steps`: the index is rebuilt at each epoch's start (and only then)."""
    torch.manual_seed(0)
    model = tiny_model("concat", objective="rgcl")
    dataset = cached_embedding_dataset(model, size=8)
    trainer = rgcl_trainer(model, dataset, tmp_path, max_steps=-1, num_train_epochs=3, per_device_train_batch_size=4)
    rebuilt_at = []
    original = trainer.rebuild_index

    def recording():
        rebuilt_at.append(trainer.state.global_step)
        original()

    trainer.rebuild_index = recording
    trainer.train()
    assert rebuilt_at == [0, 2, 4]  # two steps per epoch


def test_multi_label_and_missing_positions_are_refused_with_their_reason(tmp_path):
    with pytest.raises(ValueError, match="single-label"):
        tiny_config("concat", objective="rgcl", problem_type="multi_label_classification", num_labels=3)
    with pytest.raises(ValueError, match="objective must be one of"):
        tiny_config("concat", objective="triplet")
    model = tiny_model("concat", objective="rgcl")
    dataset = cached_embedding_dataset(model, size=8)
    trainer = rgcl_trainer(model, dataset, tmp_path, remove_unused_columns=True)
    with pytest.raises(ValueError, match="remove_unused_columns"):
        trainer.train()


def test_train_py_objective_rgcl_on_a_tiny_clip_saves_a_checkpoint_a_hub_user_reloads(
    repo_root, tiny_memes_folder, tmp_path
):
    """`train.py --objective rgcl` with frozen CLIP towers (cached embeddings) and align fusion: trains with both
    terms logged, records the objective in the config, and a Hub user without mmfusion gets the same logits."""
    from test_checkpoint import example_pair, logits_seen_by_a_hub_user
    from test_train import run_train
    from tiny_models import tiny_clip_checkpoint

    from mmfusion import MMFusionForClassification, MMFusionProcessor

    clip = tmp_path / "clip"
    tiny_clip_checkpoint(clip)
    output = tmp_path / "run"
    args = ["--dataset", tiny_memes_folder, "--text_model_name_or_path", clip, "--vision_model_name_or_path", clip,
            "--fusion", "align", "--freeze_text_encoder", "true", "--objective", "rgcl", "--rgcl_k", "4",
            "--num_train_epochs", "2", "--per_device_train_batch_size", "16", "--logging_steps", "1",
            "--report_explained_errors", "0", "--disable_tqdm", "true", "--dataloader_num_workers", "0",
            "--output_dir", output]  # fmt: skip
    result = run_train(repo_root, args)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "image inputs: cached frozen-tower embeddings" in result.stderr
    state = json.loads((output / "trainer_state.json").read_text())
    logged = [entry for entry in state["log_history"] if "rgcl_loss" in entry]
    assert len(logged) == 6 and all(entry["ce_loss"] > 0 for entry in logged)  # 48 rows, batch 16, 2 epochs
    config = json.loads((output / "config.json").read_text())
    assert (config["objective"], config["rgcl_k"], config["fusion"]) == ("rgcl", 4, "align")

    model = MMFusionForClassification.from_pretrained(output).eval()
    processor = MMFusionProcessor.from_pretrained(output)
    image, text = example_pair()
    with torch.no_grad():
        expected = model(**processor(images=image, text=text)).logits
    got = logits_seen_by_a_hub_user(repo_root, tmp_path, [str(output)])
    assert_close(torch.tensor(got[str(output)]), expected)

    # The checkpoint carries its labelled memory (the training split, embedded by the trained model), so the
    # pipeline (the checkpoint's own code) shows the training examples a verdict rests on, nearest first.
    from transformers import pipeline

    classify = pipeline("image-text-classification", model=str(output), trust_remote_code=True)
    answer = classify({"image": image, "text": text}, neighbors=3)
    neighbours = answer["neighbors"]
    assert len(neighbours) == 3 and len(model.memory) == 48
    similarities = [neighbour["similarity"] for neighbour in neighbours]
    assert similarities == sorted(similarities, reverse=True)
    with torch.no_grad():
        query = model.embed(**processor(images=image, text=text))
    best = torch.from_numpy(np.asarray(model.memory.embeddings)) @ query[0]
    assert similarities[0] == pytest.approx(best.max().item(), abs=1e-5)


def test_the_rgcl_recipe_builds_rgcls_head_on_the_pooler_outputs(repo_root, tmp_path):
    """configs/hateful_memes_clip_rgcl.yaml as written, with a tiny CLIP in place of ViT-L/14-336: no projections
    (the towers' pooler outputs), align with three 1024-wide pre-output layers, objective rgcl."""
    from tiny_models import tiny_clip_checkpoint

    from mmfusion.training.arguments import parse_arguments
    from mmfusion.training.setup import build_model

    clip = tiny_clip_checkpoint(tmp_path / "clip")
    recipe = str(repo_root / "configs" / "hateful_memes_clip_rgcl.yaml")
    towers = [
        "--text_model_name_or_path",
        str(tmp_path / "clip"),
        "--vision_model_name_or_path",
        str(tmp_path / "clip"),
    ]
    model_args, _, _ = parse_arguments([recipe, *towers, "--output_dir", str(tmp_path / "out")])
    model = build_model(model_args, ["not_hateful", "hateful"], vocab_size=0, image_size=32)
    config = model.config
    assert config.projection_dim is None and model.mmfusion.text_projection is None
    assert (config.text_embed_dim, config.image_embed_dim) == (
        clip.config.text_config.hidden_size, clip.config.vision_config.hidden_size)  # fmt: skip
    assert (config.fusion, config.fusion_map_dim, config.fusion_num_pre_output_layers) == ("align", 1024, 3)
    assert (config.objective, config.rgcl_k, config.rgcl_loss_weight) == ("rgcl", 12, 0.5)


@pytest.mark.parametrize("fusion", fusion_names(ends_in_relu=True))
def test_the_retrieval_embedding_of_a_relu_ended_fusion_is_the_layer_before_the_relu(fusion):
    """RGCL's embedding: these fusions end in a ReLU, and `embeddings` is what goes into it (negative entries
    kept), so the classifier's input is its ReLU; the other fusions' embeddings are the classifier's input."""
    torch.manual_seed(0)
    model = tiny_model(fusion, classifier_dropout=0.0).eval()
    dataset = cached_embedding_dataset(model, size=8)
    batch = MMFusionCollator(0)(list(dataset))
    batch.pop("labels")
    with torch.no_grad():
        embeddings = model(**batch).embeddings
        pooled = model.mmfusion(**batch).pooler_output
    assert (embeddings < 0).any()
    assert_close(pooled, torch.relu(embeddings))
    assert_close(model.embed(**batch), F.normalize(embeddings, dim=-1))
    plain = tiny_model("concat").eval()
    with torch.no_grad():
        assert_close(plain(**batch).embeddings, plain.mmfusion(**batch).pooler_output)
