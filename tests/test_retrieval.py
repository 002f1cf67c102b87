"""Nearest-neighbour search and RGCL's kNN score (mmfusion/retrieval.py) against hand computations."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmfusion.retrieval import VectorIndex, faiss, knn_scores

BACKENDS = [False] + ([True] if faiss is not None else [])


def normalised(rows):
    rows = np.asarray(rows, dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.mark.parametrize("use_faiss", BACKENDS)
def test_search_returns_the_nearest_first_and_pads_missing_slots(use_faiss):
    stored = normalised([[1, 0], [0, 1], [1, 1]])
    index = VectorIndex(stored, use_faiss=use_faiss)
    similarities, positions = index.search(normalised([[1, 0.1]]), k=5)
    assert positions[0, :3].tolist() == [0, 2, 1]
    assert positions[0, 3:].tolist() == [-1, -1]
    assert np.isneginf(similarities[0, 3:]).all()
    np.testing.assert_allclose(similarities[0, :3], stored[[0, 2, 1]] @ normalised([[1, 0.1]])[0], rtol=1e-6)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 40), st.integers(1, 30), st.integers(1, 8), st.integers(0, 2**31 - 1))
def test_exact_search_matches_brute_force(n, queries, k, seed):
    rng = np.random.default_rng(seed)
    stored, asked = normalised(rng.normal(size=(n, 6))), normalised(rng.normal(size=(queries, 6)))
    for use_faiss in BACKENDS:
        similarities, positions = VectorIndex(stored, use_faiss=use_faiss).search(asked, k)
        expected = np.sort(asked @ stored.T, axis=1)[:, ::-1][:, : min(k, n)]
        np.testing.assert_allclose(similarities[:, : min(k, n)], expected, atol=1e-5)
        np.testing.assert_allclose(
            np.take_along_axis(asked @ stored.T, positions[:, : min(k, n)], axis=1), expected, atol=1e-5
        )


def test_knn_score_matches_a_hand_computation():
    # K = 3 neighbours with classes 1, 0, 1 and similarities .9, .8, .5: rank weights 3, 2, 1.
    similarities = np.array([[0.9, 0.8, 0.5]])
    labels = np.array([[1, 0, 1]])
    scores = knn_scores(similarities, labels, num_labels=2)
    hateful = (3 * 0.9 - 2 * 0.8 + 1 * 0.5) / 6
    np.testing.assert_allclose(scores[0], [-hateful, hateful], rtol=1e-6)


def test_knn_score_ignores_missing_neighbours_and_handles_multi_label():
    similarities = np.array([[0.6, -np.inf], [-np.inf, -np.inf]])
    labels = np.array([[2, -1], [-1, -1]])
    scores = knn_scores(similarities, labels, num_labels=3)
    np.testing.assert_allclose(scores[0], [-0.6, -0.6, 0.6], rtol=1e-6)  # one neighbour, weight 2 / 2
    assert (scores[1] == 0).all()
    multi = knn_scores(np.array([[0.5, 0.4]]), np.array([[[1, 0], [1, 1]]]), num_labels=2)
    np.testing.assert_allclose(multi[0], [(2 * 0.5 + 0.4) / 3, (-2 * 0.5 + 0.4) / 3], rtol=1e-6)


def test_bad_shapes_are_refused():
    index = VectorIndex(normalised([[1, 0, 0]]))
    with pytest.raises(ValueError, match=r"shape \(n, 3\)"):
        index.search(np.ones((2, 4), dtype=np.float32), 1)
    with pytest.raises(ValueError, match="2-D"):
        VectorIndex(np.ones(3, dtype=np.float32))
