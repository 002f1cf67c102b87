"""mmfusion demo: upload an image, type its caption, see the class probabilities and which modality drove them.

Runs locally or as a Hugging Face Space (`python app.py`; Spaces set `GRADIO_SERVER_NAME`/`GRADIO_SERVER_PORT`).

    python app.py                                          # outputs/demo-early-fusion (made by `python train.py`)
    python app.py --checkpoint user/my-mmfusion-model      # any checkpoint folder or Hub id
    MMFUSION_CHECKPOINT=path/to/checkpoint python app.py
    python app.py --checkpoint exported/ --backend onnx    # an `mmfusion-export` folder, on ONNX Runtime

Importing this file builds nothing and launches nothing: `build_demo(predictor)` returns the `gr.Blocks`.
"""

from __future__ import annotations

import argparse
import os
import sys
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


def classify(predictor: MMFusionPredictor, image_path: str | None, text: str | None):
    """The app's one function: probabilities for the pair, the ablation table and the verdict on the modalities."""
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
    return report.probabilities["full"], table, report.explanation


def build_demo(predictor: MMFusionPredictor) -> gr.Blocks:
    """The Gradio app around `predictor` (not launched). Its API endpoint is `/classify(image, text)`."""
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
            with gr.Column():
                probabilities = gr.Label(label="Class probabilities", num_top_classes=len(labels))
                verdict = gr.Markdown()
                ablations = gr.Dataframe(
                    headers=["input", *labels], label="With a modality removed", interactive=False
                )

        def run(image_path, caption):
            return classify(predictor, image_path, caption)

        outputs = [probabilities, ablations, verdict]
        button.click(run, inputs=[image, text], outputs=outputs, api_name="classify")
        text.submit(run, inputs=[image, text], outputs=outputs, api_visibility="private")
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
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    options = {"onnx_file": args.onnx_file} if args.backend == "onnx" else {}
    try:
        predictor = load_predictor(resolve_checkpoint(args.checkpoint), backend=args.backend, **options)
    except (CheckpointNotFoundError, CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    build_demo(predictor).launch(server_name=args.host, server_port=args.port, share=args.share or None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
