"""The labelled memory saved with a checkpoint (mmfusion/memory.py): files, fingerprint, add/remove, modes, search."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import tiny_model, tiny_processor
from transformers import AutoModelForSequenceClassification

from mmfusion.memory import (
    MEMORY_INDEX_FILENAME,
    MEMORY_WEIGHTS_FILENAME,
    LabelledMemory,
    LabelledMemoryError,
    MemoryMismatchError,
    combine_probabilities,
    knn_probabilities,
    model_fingerprint,
)
from mmfusion.retrieval import VectorIndex, faiss

LABELS = {0: "not_hateful", 1: "hateful"}


def pairs(count, offset=0):
    images = [Image.new("RGB", (40, 40), ((37 * i) % 256, (91 * i) % 256, 200)) for i in range(offset, offset + count)]
    texts = [f"a cat sits on the mat {'dog ' * (i % 3)}" for i in range(offset, offset + count)]
    return images, texts


@pytest.fixture
def model_with_memory():
    torch.manual_seed(0)
    model, processor = tiny_model("concat", id2label=LABELS).eval(), tiny_processor()
    images, texts = pairs(6)
    inputs = processor(images=images, text=texts)
    model.add_to_memory([f"m{i}" for i in range(6)], [0, 1, 0, 1, 1, 0], captions=texts, **inputs)
    return model, processor


def file_bytes(folder):
    return {name: (folder / name).read_bytes() for name in (MEMORY_WEIGHTS_FILENAME, MEMORY_INDEX_FILENAME)}


def test_round_trip_is_exact_and_memory_mapped(model_with_memory, tmp_path):
    model, processor = model_with_memory
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path, trust_remote_code=True)
    memory = loaded.memory
    assert isinstance(memory.embeddings, np.memmap)
    assert np.array_equal(np.asarray(memory.embeddings), model.memory.embeddings)
    assert np.array_equal(memory.labels, model.memory.labels)
    assert memory.ids == model.memory.ids and memory.captions == model.memory.captions
    assert memory.fingerprint == model_fingerprint(loaded) == model_fingerprint(model)
    # the same checkpoint in bfloat16 keeps its fingerprint (samples rounded to bfloat16)
    halved = AutoModelForSequenceClassification.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert halved.memory is not None and model_fingerprint(halved) == memory.fingerprint


def test_a_checkpoint_without_memory_loads_with_none(tmp_path):
    tiny_model("concat").save_pretrained(tmp_path)
    assert AutoModelForSequenceClassification.from_pretrained(tmp_path).memory is None


def test_a_memory_built_by_another_model_is_refused(model_with_memory, tmp_path):
    model, _ = model_with_memory
    model.save_pretrained(tmp_path / "a")
    other = tiny_model("concat", id2label=LABELS)  # other random weights
    other.save_pretrained(tmp_path / "b")
    for name in (MEMORY_WEIGHTS_FILENAME, MEMORY_INDEX_FILENAME):  # copy a's memory beside b's weights
        (tmp_path / "b" / name).write_bytes((tmp_path / "a" / name).read_bytes())
    with pytest.raises(MemoryMismatchError, match="built by another model"):
        AutoModelForSequenceClassification.from_pretrained(tmp_path / "b")
    # and a model whose memory no longer matches (weights changed) does not save it
    with torch.no_grad():
        model.mmfusion.text_model.embeddings.word_embeddings.weight.add_(0.5)
    model.save_pretrained(tmp_path / "c")
    assert not (tmp_path / "c" / MEMORY_INDEX_FILENAME).exists()


def test_add_and_remove_refuse_bad_requests_and_change_nothing(model_with_memory, tmp_path):
    model, processor = model_with_memory
    memory = model.memory
    memory.save(tmp_path)
    before = file_bytes(tmp_path)
    embeddings = np.asarray(memory.embeddings).copy()
    with pytest.raises(LabelledMemoryError, match=r"already in the memory: 'm1', 'm4'"):
        memory.add(["new", "m1", "m4"], embeddings[:3], [0, 1, 0])
    with pytest.raises(LabelledMemoryError, match=r"more than once: 'x'"):
        memory.add(["x", "x"], embeddings[:2], [0, 1])
    with pytest.raises(LabelledMemoryError, match="class ids in 0..1"):
        memory.add(["y"], embeddings[:1], [2])
    with pytest.raises(LabelledMemoryError, match="L2-normalised"):
        memory.add(["z"], embeddings[:1] * 2, [0])
    with pytest.raises(LabelledMemoryError, match=r"not in the memory: 'nope'"):
        memory.remove(["m0", "nope"])
    assert len(memory) == 6 and np.array_equal(memory.embeddings, embeddings)
    assert file_bytes(tmp_path) == before
    memory.remove(["m0", "m5"])
    assert memory.ids == ["m1", "m2", "m3", "m4"]
    np.testing.assert_array_equal(memory.embeddings, embeddings[1:5])
    images, texts = pairs(2, offset=10)
    model.add_to_memory(["n0", "n1"], [1, 0], **processor(images=images, text=texts))
    assert memory.ids[-2:] == ["n0", "n1"] and memory.labels[-2:].tolist() == [1, 0]


def test_a_pair_of_files_from_different_writes_is_refused(model_with_memory, tmp_path):
    memory = model_with_memory[0].memory
    memory.save(tmp_path / "a")
    memory.save(tmp_path / "b")
    (tmp_path / "a" / MEMORY_INDEX_FILENAME).write_bytes((tmp_path / "b" / MEMORY_INDEX_FILENAME).read_bytes())
    with pytest.raises(LabelledMemoryError, match="different writes"):
        LabelledMemory.load(tmp_path / "a")
    index = json.loads((tmp_path / "b" / MEMORY_INDEX_FILENAME).read_text())
    (tmp_path / "b" / MEMORY_WEIGHTS_FILENAME).write_bytes(
        (tmp_path / "b" / MEMORY_WEIGHTS_FILENAME).read_bytes()[:-8]
    )
    with pytest.raises(LabelledMemoryError, match="truncated"):
        LabelledMemory.load(tmp_path / "b")
    assert index["rows"] == 6


def test_knn_probabilities_and_modes():
    scores = np.array([[-0.5, 0.5], [0.2, -0.2]])
    np.testing.assert_allclose(knn_probabilities(scores), [[0.25, 0.75], [0.6, 0.4]])
    three = knn_probabilities(np.array([[0.0, 1.0, -1.0]]))  # (s + 1) / 2 = .5, 1, 0, renormalised
    np.testing.assert_allclose(three, [[1 / 3, 2 / 3, 0.0]])
    np.testing.assert_allclose(knn_probabilities(np.array([[0.0, 1.0, -1.0]]), multi_label=True), [[0.5, 1, 0]])
    head = np.array([[0.9, 0.1], [0.1, 0.9]])
    np.testing.assert_allclose(combine_probabilities(head, scores, "head", 0.3), head)
    np.testing.assert_allclose(combine_probabilities(head, scores, "mix", 0.25), 0.75 * head + 0.25 * (scores + 1) / 2)
    with pytest.raises(LabelledMemoryError, match="needs the model's labelled memory"):
        combine_probabilities(head, None, "knn", 0.5)


def test_memory_search_matches_brute_force_and_neighbours_name_rows(model_with_memory):
    memory = model_with_memory[0].memory
    queries = np.asarray(memory.embeddings)[:2]
    found = memory.neighbors(queries, 3)
    expected = np.argsort(-(queries @ np.asarray(memory.embeddings).T), axis=1)[:, :3]
    assert [[row["id"] for row in result] for result in found] == [[memory.ids[p] for p in r] for r in expected]
    assert found[0][0]["id"] == "m0" and found[0][0]["similarity"] == pytest.approx(1.0, abs=1e-5)
    assert found[0][0]["label"] == "not_hateful" and found[0][0]["caption"] == memory.captions[0]


def test_memory_mapped_chunked_exact_search_equals_in_memory(tmp_path, monkeypatch):
    import mmfusion.retrieval as retrieval

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(300, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    path = tmp_path / "v.npy"
    np.save(path, vectors)
    mapped = np.load(path, mmap_mode="r")
    monkeypatch.setattr(retrieval, "STORED_CHUNK", 64)  # several chunks to merge
    queries = vectors[:7] + 0.1 * rng.normal(size=(7, 16)).astype(np.float32)
    got = VectorIndex(mapped).search(queries, 5)
    expected = VectorIndex(vectors, use_faiss=False).search(queries, 5)
    np.testing.assert_array_equal(got[1], expected[1])
    np.testing.assert_allclose(got[0], expected[0], atol=1e-6)


@pytest.mark.skipif(faiss is None, reason="needs faiss-cpu")
def test_approximate_index_recall_on_clustered_queries():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(20000, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = vectors[:200] + 0.05 * rng.normal(size=(200, 32)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    _, truth = VectorIndex(vectors, use_faiss=False).search(queries, 10)

    def recall(nprobe):
        index = VectorIndex(vectors, approximate=True, nlist=64, nprobe=nprobe)
        _, found = index.search(queries, 10)
        assert index.approximate
        return np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth)]), found

    few, found = recall(8)  # 1/8 of the clusters: random 32-dim data has no structure to help
    assert 0.5 <= few < 1.0, few
    assert (found[:, 0] == np.arange(200)).mean() > 0.95  # the perturbed row itself still comes first
    assert recall(64)[0] == 1.0  # every cluster searched: exact
