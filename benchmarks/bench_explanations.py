"""The explanations' sanity check on the demo (issue 24): do a trained model's explanations find the demo's cues, and
do those of the same model with its towers randomised not?

    python train.py                                   # outputs/demo-early-fusion
    python benchmarks/bench_explanations.py [--checkpoint outputs/demo-early-fusion] [--pairs 200] [--seeds 3]

Measures (`mmfusion.inference.explain.demo_sanity_figures`) on the first `--pairs` demo test pairs: the share of
captions whose keyword gets the largest Integrated Gradients magnitude (`keyword_top1`), the mean change of the
explained class's probability when the picture is replaced by a grey one (`image_deletion`) and when the filler words
are deleted (`filler_deletion`), and the heat map's background/shape ratio. Prints a markdown table
(benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import time


def percent(value: float) -> str:
    return "-" if value != value else f"{value:.1%}"  # NaN: no pair to rank


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="outputs/demo-early-fusion")
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--seeds", type=int, default=3, help="randomised-tower draws")
    parser.add_argument("--steps", type=int, default=32)
    args = parser.parse_args(argv)

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
