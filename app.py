"""mmfusion demo: upload an image (or click an example), type its caption, see the decision with the threshold in
force, the class probabilities, which modality drove them and an explanation (the image's heat map, the caption's
words scored).

Runs locally or as a Hugging Face Space (`python app.py`; Spaces set `GRADIO_SERVER_NAME`/`GRADIO_SERVER_PORT`).

    python app.py                                          # outputs/demo-early-fusion (made by `python train.py`)
    python app.py --checkpoint user/my-mmfusion-model      # any checkpoint folder or Hub id
    MMFUSION_CHECKPOINT=path/to/checkpoint python app.py
    python app.py --checkpoint exported/ --backend onnx    # an `mmfusion-export` folder, on ONNX Runtime

Importing this file builds nothing and launches nothing: `build_demo(predictor)` returns the `gr.Blocks`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import gradio as gr

from mmfusion.checkpoints import CheckpointError
from mmfusion.evaluation.ablation import ABLATION_TITLES
from mmfusion.inference import MMFusionPredictor, modality_report
from mmfusion.inference.images import ImageCheckError

DEFAULT_CHECKPOINT = "outputs/demo-early-fusion"
CHECKPOINT_ENV = "MMFUSION_CHECKPOINT"


class CheckpointNotFoundError(FileNotFoundError):
    """The checkpoint to serve is neither a local folder nor a loadable Hub model."""


def resolve_checkpoint(cli_value: str | None) -> str:
    """`--checkpoint`, else `$MMFUSION_CHECKPOINT`, else `outputs/demo-early-fusion`."""
    return cli_value or os.environ.get(CHECKPOINT_ENV) or DEFAULT_CHECKPOINT


def load_predictor(checkpoint: str, backend: str = "torch", **options) -> MMFusionPredictor:
    """Load the predictor, turning "nothing there" into a message that says what to do.

    Raises:
        `CheckpointNotFoundError`: the default checkpoint was not trained yet, or `checkpoint` is neither a local
            folder nor a Hub model that could be loaded.
    """
    if checkpoint == DEFAULT_CHECKPOINT and not Path(checkpoint).is_dir():
        raise CheckpointNotFoundError(
            f"No checkpoint at {DEFAULT_CHECKPOINT}: run `python train.py` first (it trains the demo model and saves "
            f"it there), or pass --checkpoint PATH_OR_HUB_ID (or set {CHECKPOINT_ENV})."
        )
    try:
        return MMFusionPredictor.from_pretrained(checkpoint, backend=backend, **options)
    except OSError as error:  # transformers reports a missing local folder / unknown Hub repo as OSError
        raise CheckpointNotFoundError(
            f"Could not load checkpoint {checkpoint!r}: it is neither a checkpoint folder nor a Hub model that could "
            f"be downloaded ({error})."
        ) from error


def threshold_in_force(predictor: MMFusionPredictor) -> str:
    """One markdown line saying how the label is decided: the checkpoint's decision threshold (and how it was
    chosen) or argmax, and the calibration temperature."""
    config, names = predictor.config, predictor.label_names
    if predictor.threshold is None:
        rule = "the most probable class is predicted (no decision threshold)"
    elif isinstance(predictor.threshold, float):
        rule = f"`{names[1]}` is predicted when P({names[1]}) ≥ **{predictor.threshold:.3g}**"
    else:
        rule = "per-class thresholds " + ", ".join(f"{n} {t:.3g}" for n, t in zip(names, predictor.threshold))
    policy = getattr(config, "decision_policy", None)
    figures = getattr(config, "decision_figures", None) or {}
    if predictor.threshold is not None and policy:
        rule += f" (policy `{policy}`"
        if figures.get("split") and "precision" in figures:
            rule += (
                f", on {figures['split']}: precision {figures['precision']:.2f}, recall {figures['recall']:.2f}, "
                f"FPR {figures['fpr']:.2f}"
            )
        rule += ")"
    temperature = predictor.temperature
    calibrated = (
        f"scores calibrated with temperature {temperature:.3g}" if temperature != 1.0 else "raw softmax scores"
    )
    return f"**Decision rule**: {rule}; {calibrated}."


def demo_examples(count: int = 6) -> list[list[str]]:
    """`[image path, caption]` pairs from the demo dataset (written once to a temporary folder), for `gr.Examples`."""
    from mmfusion.data import make_demo_folder

    size = max(2, count + count % 2)  # the demo's splits come in caption pairs
    root = Path(tempfile.gettempdir()) / f"mmfusion-app-examples-{size}"
    folder = Path(make_demo_folder(root, seed=0, num_train=2, num_validation=2, num_test=size))
    rows = [json.loads(line) for line in (folder / "test.jsonl").read_text(encoding="utf-8").splitlines()]
    return [[str(folder / row["img"]), row["text"]] for row in rows[:count]]


def classify(predictor: MMFusionPredictor, image_path: str | None, text: str | None):
    """The app's one function: probabilities for the pair, the ablation table, the verdict on the modalities and
    the decision (with the threshold in force)."""
    if image_path is None:
        raise gr.Error("Upload an image first.")
    try:
        report = modality_report(predictor, image_path, text or "")
    except ImageCheckError as error:
        raise gr.Error(str(error)) from error
    table = [
        [ABLATION_TITLES[name], *(round(probabilities[label], 4) for label in predictor.label_names)]
        for name, probabilities in report.probabilities.items()
    ]
    decision = f"### Decision: `{report.predicted_label}`\n\n{threshold_in_force(predictor)}"
    return report.probabilities["full"], table, report.explanation, decision


def explain(predictor: MMFusionPredictor, image_path: str | None, text: str | None):
    """The explanation panel: the image with the decided class's Grad-CAM heat map, the caption's words scored by
    Integrated Gradients (red: towards the decided class, blue: against) and a line saying what is shown."""
    from mmfusion.inference.explain import heatmap_overlay, highlighted_words
    from mmfusion.inference.images import load_image

    if image_path is None:
        raise gr.Error("Upload an image first.")
    if getattr(predictor.backend, "model", None) is None:
        return None, [], "Explanations need the PyTorch backend (gradients); this app runs an ONNX export."
    if getattr(predictor.config, "vision_language_config", None) is not None:
        return None, [], "Explanations are not available yet for a joint vision-language model (fusion=joint)."
    try:
        image = load_image(image_path)
    except ImageCheckError as error:
        raise gr.Error(str(error)) from error
    explanation = predictor.explain(image, text or "")
    note = (
        f"Why `{explanation.label}` (P = {explanation.score:.2f}): the heat map is Grad-CAM on the vision tower's "
        "last feature map; the words are scored by Integrated Gradients against an empty caption "
        f"(P = {explanation.baseline_score:.2f} without the words)."
        if explanation.baseline_score is not None
        else f"Why `{explanation.label}` (P = {explanation.score:.2f}): Grad-CAM on the vision tower's last feature map."
    )
    return heatmap_overlay(image, explanation), highlighted_words(explanation), note


NEIGHBOR_COUNT = 5
NEIGHBOR_HEADERS = ["id", "label", "similarity", "caption"]


def nearest_examples(predictor: MMFusionPredictor, image_path: str | None, text: str | None, count=NEIGHBOR_COUNT):
    """The nearest labelled examples of the checkpoint's memory (what a kNN decision rests on), as table rows, and a
    line saying how the decision was made (head, kNN over the memory, or their mix)."""
    if image_path is None:
        raise gr.Error("Upload an image first.")
    if predictor.memory is None:
        return [], "This checkpoint has no labelled memory (see the README's *Retrieval* section to add one)."
    try:
        record = predictor.predict(image_path, text or "", neighbors=count)
    except ImageCheckError as error:
        raise gr.Error(str(error)) from error
    rows = [
        [n["id"], n["label"] if isinstance(n["label"], str) else ", ".join(n["label"]), round(n["similarity"], 4),
         n["caption"] or ""]
        for n in record["neighbors"]
    ]  # fmt: skip
    mode = predictor.prediction_mode
    how = {
        "head": "the classifier head decides; the memory shows the nearest labelled examples",
        "knn": f"decided by its {predictor.config.knn_k} nearest labelled examples (kNN over the memory)",
        "mix": f"the head mixed with kNN over the memory ({predictor.config.mix_weight:g} kNN)",
    }[mode]
    return rows, f"Prediction mode `{mode}`: {how}; {len(predictor.memory)} labelled examples in memory."


def checkpoint_examples(checkpoint: str, count: int = 6) -> tuple[list[list[str]], str] | None:
    """Examples from the data the checkpoint was evaluated on: the first split its model card names (validation,
    as train.py writes it), read when the dataset is the demo or a local path; `([image path, caption], ...), split`
    or None when that data is not at hand."""
    from huggingface_hub import ModelCard

    card_path = Path(checkpoint) / "README.md"
    if not card_path.is_file():
        return None
    try:
        results = ModelCard.load(card_path).data.eval_results or []
    except Exception:  # a card that is not train.py's: no examples from it
        return None
    if not results:
        return None
    dataset, split = results[0].dataset_name, results[0].dataset_split
    if dataset == "demo":
        return demo_examples(count), "demo"
    if not dataset or not Path(dataset).exists():
        return None
    from mmfusion.data import load_image_text_dataset

    try:
        rows = load_image_text_dataset(dataset)[split].select(range(count))
    except Exception:  # the folder moved or changed since training: no examples from it
        return None
    folder = Path(tempfile.mkdtemp(prefix="mmfusion-app-examples-"))
    examples = []
    for index, row in enumerate(rows):
        path = folder / f"{index}.png"
        row["image"].save(path)
        examples.append([str(path), row["text"]])
    return examples, split


def build_demo(predictor: MMFusionPredictor, examples: list[list[str]] | None = None) -> gr.Blocks:
    """The Gradio app around `predictor` (not launched). Its API endpoint is `/classify(image, text)`; `examples`
    (`[image path, caption]` pairs, e.g. `demo_examples()`) become clickable examples."""
    labels = predictor.label_names
    with gr.Blocks(title="mmfusion demo") as demo:
        gr.Markdown(
            "# mmfusion: image + caption classification\n"
            "Upload an image and type its caption. Besides the class probabilities, the model is run again with the "
            "image blanked, the caption emptied and both, which shows which modality the decision rests on."
        )
        with gr.Row():
            with gr.Column():
                # filepath + no mode conversion: the image is read by mmfusion itself (RGB conversion with a white
                # background for transparency, EXIF rotation), exactly as at training time.
                image = gr.Image(type="filepath", image_mode=None, label="Image", sources=["upload", "clipboard"])
                text = gr.Textbox(label="Caption", placeholder="the text printed on the meme")
                button = gr.Button("Classify", variant="primary")
                if examples:
                    gr.Examples(examples=examples, inputs=[image, text], label="Examples (click one)")
            with gr.Column():
                decision = gr.Markdown(threshold_in_force(predictor))
                probabilities = gr.Label(label="Class probabilities", num_top_classes=len(labels))
                verdict = gr.Markdown()
                ablations = gr.Dataframe(
                    headers=["input", *labels], label="With a modality removed", interactive=False
                )
                neighbors = gr.Dataframe(
                    headers=NEIGHBOR_HEADERS, label="Nearest labelled examples (the memory)", interactive=False
                )
                neighbors_note = gr.Markdown()
        with gr.Row():
            heatmap = gr.Image(label="Image: Grad-CAM heat map of the decided class", type="pil", interactive=False)
            with gr.Column():
                words = gr.HighlightedText(
                    label="Caption: Integrated Gradients per word (red: towards the decided class, blue: against)",
                    combine_adjacent=False,
                    show_legend=False,
                )
                explanation_note = gr.Markdown()

        def run(image_path, caption):
            return classify(predictor, image_path, caption)

        def run_explain(image_path, caption):
            return explain(predictor, image_path, caption)

        def run_neighbors(image_path, caption):
            return nearest_examples(predictor, image_path, caption)

        outputs = [probabilities, ablations, verdict, decision]
        explained = [heatmap, words, explanation_note]
        nearest = [neighbors, neighbors_note]
        button.click(run, inputs=[image, text], outputs=outputs, api_name="classify").then(
            run_neighbors, inputs=[image, text], outputs=nearest, api_name="neighbors"
        ).then(run_explain, inputs=[image, text], outputs=explained, api_name="explain")
        text.submit(run, inputs=[image, text], outputs=outputs, api_visibility="private").then(
            run_neighbors, inputs=[image, text], outputs=nearest, api_visibility="private"
        ).then(run_explain, inputs=[image, text], outputs=explained, api_visibility="private")
    return demo


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="mmfusion demo app (Gradio).")
    parser.add_argument(
        "--checkpoint", help=f"checkpoint folder or Hub id (default: ${CHECKPOINT_ENV} or {DEFAULT_CHECKPOINT})"
    )
    parser.add_argument("--backend", choices=("torch", "onnx"), default="torch")
    parser.add_argument("--onnx-file", default="model.onnx", help="with --backend onnx: model.onnx or model_int8.onnx")
    parser.add_argument("--host", help="server address (default: Gradio's, or $GRADIO_SERVER_NAME)")
    parser.add_argument("--port", type=int, help="server port (default: Gradio's, or $GRADIO_SERVER_PORT)")
    parser.add_argument("--share", action="store_true", help="create a public gradio.live link")
    parser.add_argument("--threshold", type=float, help="decision threshold instead of the checkpoint's, in [0, 1]")
    parser.add_argument(
        "--no-examples",
        action="store_true",
        help="no clickable examples (default: from the split the checkpoint was validated on, when its data is at "
        "hand, else from the demo data)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    options = {"onnx_file": args.onnx_file} if args.backend == "onnx" else {}
    if args.threshold is not None:
        options["threshold"] = args.threshold
    try:
        predictor = load_predictor(resolve_checkpoint(args.checkpoint), backend=args.backend, **options)
    except (CheckpointNotFoundError, CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    examples = None
    if not args.no_examples:  # the checkpoint's own evaluation data when at hand, else the demo's
        found = checkpoint_examples(resolve_checkpoint(args.checkpoint))
        examples = found[0] if found else demo_examples()
    build_demo(predictor, examples).launch(server_name=args.host, server_port=args.port, share=args.share or None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
