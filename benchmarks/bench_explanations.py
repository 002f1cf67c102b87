"""The explanations' sanity check on the demo (issue 24): do a trained model's explanations find the demo's cues, and
do those of the same model with its towers randomised not?

    python train.py                                   # outputs/demo-early-fusion
    python benchmarks/bench_explanations.py [--checkpoint outputs/demo-early-fusion] [--pairs 200] [--seeds 3]

Measures (`mmfusion.inference.explain.demo_sanity_figures`) on the first `--pairs` demo test pairs: the share of
captions whose keyword gets the largest Integrated Gradients magnitude (`keyword_top1`), the mean change of the
explained class's probability when the picture is replaced by a grey one (`image_deletion`) and when the filler words
are deleted (`filler_deletion`), and the heat map's background/shape ratio. Prints a markdown table
(benchmarks/RESULTS.md).

    python benchmarks/bench_explanations.py --patch-demo [--train-seeds 3] [--seeds 2] [--pairs 200]

Faithfulness to the cue on the demo with a spatial image cue (`load_demo_dataset(image_cue="patch")`): trains the
tests' tiny patch-demo model (`tests/tiny_models.py` `train_patch_demo_model`, about 30 s each on one thread) for each
of `--train-seeds` seeds and measures it and `--seeds` tower randomisations of it with
`mmfusion.inference.faithfulness.demo_cue_faithfulness` (pointing game, energy in the cue box, deletion, keyword
share) on the first `--pairs` test pairs. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import time


def percent(value: float) -> str:
    return "-" if value != value else f"{value:.1%}"  # NaN: no pair to rank


def figure(value: float, digits: int = 2) -> str:
    return "-" if value != value else f"{value:.{digits}f}"  # NaN: the cue never matters


def patch_demo(args) -> None:
    """`--patch-demo`: faithfulness to the cue, trained models against their randomised towers."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from tiny_models import train_patch_demo_model

    from mmfusion.data import load_demo_dataset
    from mmfusion.inference.explain import randomized_towers
    from mmfusion.inference.faithfulness import demo_cue_faithfulness, passes_cue_faithfulness

    dataset = load_demo_dataset(image_cue="patch")
    test = dataset["test"][: args.pairs]
    print(f"patch demo: {len(test['text'])} test pairs, {args.steps} IG steps\n")
    print(
        "| model | val. acc. | image matters | pointing game (there / all) | box energy / area (there / all) "
        "| deletion top / random | caption matters | keyword share (there / all) | other word | passes | time |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for train_seed in range(args.train_seeds):
        start = time.perf_counter()
        model, processor, accuracy = train_patch_demo_model(dataset, train_seed, max_steps=300, target_accuracy=1.01)
        trained_seconds = time.perf_counter() - start
        rows = [(f"trained (seed {train_seed}, {trained_seconds:.0f} s)", model, f"{accuracy:.1%}")]
        rows += [(f"  towers randomised ({s})", randomized_towers(model, s), "-") for s in range(1, args.seeds + 1)]
        for name, candidate, validation in rows:
            start = time.perf_counter()
            f = demo_cue_faithfulness(candidate, processor, test["image"], test["text"], steps=args.steps)
            seconds = time.perf_counter() - start
            print(
                f"| {name} | {validation} | {f['image_matters']:.0%} | {figure(f['pointing_game'])} / "
                f"{f['pointing_game_all']:.2f} | {figure(f['box_energy'] / f['box_area'], 1)} / "
                f"{f['box_energy_all'] / f['box_area_all']:.1f} | {figure(f['deletion_top'])} / "
                f"{figure(f['deletion_random'])} | {f['caption_matters']:.0%} | {figure(f['keyword_share'])} / "
                f"{f['keyword_share_all']:.2f} | {figure(f['other_word_share'], 3)} | "
                f"{'yes' if passes_cue_faithfulness(f) else 'no'} | {seconds:.1f} s |",
                flush=True,
            )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="outputs/demo-early-fusion")
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--seeds", type=int, default=3, help="randomised-tower draws")
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--patch-demo", action="store_true", help="faithfulness to the cue on the patch demo")
    parser.add_argument("--train-seeds", type=int, default=3, help="with --patch-demo: models trained")
    args = parser.parse_args(argv)
    if args.patch_demo:
        return patch_demo(args)

    from transformers import AutoModelForSequenceClassification, AutoProcessor

    from mmfusion.data import load_demo_dataset
    from mmfusion.inference.explain import demo_sanity_figures, passes_demo_sanity, randomized_towers

    model = AutoModelForSequenceClassification.from_pretrained(args.checkpoint, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(args.checkpoint, trust_remote_code=True)
    test = load_demo_dataset()["test"][: args.pairs]
    rows = [("trained", model)] + [
        (f"towers randomised (seed {s})", randomized_towers(model, s)) for s in range(1, args.seeds + 1)
    ]
    print(
        f"{args.checkpoint}: fusion={model.config.fusion}, {len(test['text'])} demo test pairs, {args.steps} IG steps\n"
    )
    print(
        "| model | caption matters | keyword first (there) | keyword first (all) | image deletion | filler deletion "
        "| heat background/shape | mean abs text_delta | passes | time |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, candidate in rows:
        start = time.perf_counter()
        figures = demo_sanity_figures(candidate, processor, test["image"], test["text"], steps=args.steps)
        seconds = time.perf_counter() - start
        print(
            f"| {name} | {figures['caption_matters']:.1%} | {percent(figures['keyword_top1'])} | "
            f"{figures['keyword_top1_all']:.1%} | {figures['image_deletion']:.3f} | "
            f"{figures['filler_deletion']:.3f} | {figures['heat_on_background']:.2f} | "
            f"{figures['mean_abs_text_delta']:.3f} | {'yes' if passes_demo_sanity(figures) else 'no'} | {seconds:.1f} s |"
        )


if __name__ == "__main__":
    main()
