"""Explanations are faithful to the cue (issue 24): on the demo with a spatial image cue (a warm or cold patch at a
random position, `load_demo_dataset(image_cue="patch")`), a trained model's Grad-CAM points at the patch and its
Integrated Gradients give the keyword most of the caption's attribution; the same model with its towers randomised
(Adebayo et al. 2018) fails the same criterion. The measures are checked first on hand-made maps."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from tiny_models import train_patch_demo_model

from mmfusion.inference.faithfulness import (
    CRITERION,
    box_area_share,
    box_energy,
    cue_faithfulness,
    demo_cue_faithfulness,
    passes_cue_faithfulness,
    pointing_game_hit,
    top_pixel_mask,
    word_share,
)

PAIRS = 60  # demo test pairs measured (as bench_explanations.py --patch-demo does with more)


# --- the measures, on maps with a known answer -------------------------------------------------------------------


def test_pointing_game_and_box_energy_on_known_maps():
    box = (10, 20, 30, 30)  # left, top, right, bottom: 20 x 10 px of a 64 x 64 image
    heat = np.zeros((64, 64))
    assert not pointing_game_hit(heat, box) and box_energy(heat, box) == 0.0  # nothing pointed at
    heat[25, 15] = 1.0
    assert pointing_game_hit(heat, box) and box_energy(heat, box) == 1.0
    heat[5, 50] = 3.0  # a stronger peak outside
    assert not pointing_game_hit(heat, box) and box_energy(heat, box) == pytest.approx(0.25)
    flat = np.ones((64, 64))
    assert box_energy(flat, box) == pytest.approx(box_area_share(box, 64, 64)) == pytest.approx(200 / 4096)
    assert not pointing_game_hit(flat * -1, box)  # negative maps point nowhere


def test_word_share_and_top_pixels():
    assert word_share([0.5, -1.5, 0.0], 1) == pytest.approx(0.75)
    assert word_share([0.0, 0.0], 0) == 0.0
    heat = np.array([[0.1, 0.9], [0.5, 0.0]])
    mask = top_pixel_mask(heat, 2, np.random.default_rng(0))
    assert mask.tolist() == [[False, True], [True, False]]
    ties = top_pixel_mask(np.zeros((8, 8)), 5, np.random.default_rng(0))
    assert ties.sum() == 5


def test_bad_input_is_named():
    image = Image.new("RGB", (8, 8))
    with pytest.raises(ValueError, match="2 images, 1 captions"):
        cue_faithfulness(None, None, [image, image], ["a sun"], [(0, 0, 2, 2)] * 2, ["sun"] * 2)


# --- a trained model against the same model with its towers randomised -------------------------------------------


@pytest.fixture(scope="module")
def patch_demo(tmp_path_factory):
    from mmfusion.data import load_demo_dataset

    root = tmp_path_factory.mktemp("patch-demo") / "seed0"
    return load_demo_dataset(root=root, num_train=2000, num_validation=200, num_test=200, image_cue="patch")


@pytest.fixture(scope="module")
def trained(patch_demo):
    model, processor, validation_accuracy = train_patch_demo_model(patch_demo, max_steps=300, target_accuracy=1.01)
    assert validation_accuracy >= 0.95, f"the model did not learn the patch demo: {validation_accuracy:.3f}"
    return model, processor


@pytest.fixture(scope="module")
def test_pairs(patch_demo):
    return patch_demo["test"][:PAIRS]


def test_trained_model_explanations_find_both_cues(trained, test_pairs):
    model, processor = trained
    figures = demo_cue_faithfulness(model, processor, test_pairs["image"], test_pairs["text"])
    print(figures)
    assert passes_cue_faithfulness(figures), figures
    # each part on its own, so a failure says which
    assert figures["image_matters"] >= CRITERION["cue_matters"] and figures["caption_matters"] >= 0.2
    assert figures["pointing_game"] >= CRITERION["pointing_game"], figures
    assert figures["box_energy"] >= CRITERION["box_energy_over_area"] * figures["box_area"], figures
    assert figures["deletion_top"] >= max(CRITERION["deletion_top"], 3 * figures["deletion_random"]), figures
    assert figures["keyword_share"] >= CRITERION["keyword_share"] > figures["other_word_share"], figures


@pytest.mark.parametrize("seed", [1, 2])
def test_randomised_towers_fail_the_same_criterion(trained, test_pairs, seed):
    """With the towers re-drawn the score no longer depends on either cue (so neither "matters"), and the pointing
    game and the keyword share fail their thresholds even over every pair, where no cue-matters gate applies. (Energy
    in the box over every pair does not separate on its own: a randomised CNN's features answer colour edges, the
    patch's among them, up to 2.7 times the box's area share in benchmarks/RESULTS.md.)"""
    from mmfusion.inference.explain import randomized_towers

    model, processor = trained
    figures = demo_cue_faithfulness(randomized_towers(model, seed), processor, test_pairs["image"], test_pairs["text"])
    print(figures)
    assert not passes_cue_faithfulness(figures), figures
    assert (
        figures["image_matters"] < CRITERION["cue_matters"] and figures["caption_matters"] < CRITERION["cue_matters"]
    )
    assert figures["pointing_game_all"] < CRITERION["pointing_game"], figures
    assert figures["keyword_share_all"] < CRITERION["keyword_share"], figures
