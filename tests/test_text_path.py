"""One text path: a caption longer than the training limit is cut where training cut it, by every serving path.

Training tokenizes at `--max_text_length` (128 here); the tokenizer's own limit is BERT's 512. A checkpoint whose
processor truncated at 512 would classify a long caption from tokens the model never saw in training, so the
training input path, the predictor, the pipeline and the ONNX export must all give the logits of the caption cut
at 128 tokens.
"""

import itertools
import json

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import IMAGE_SIZE, tiny_model, tiny_text_config
from torch.testing import assert_close
from transformers import AutoProcessor, pipeline

from mmfusion import MMFusionProcessor, default_image_processor
from mmfusion.inference import MMFusionPredictor, export_onnx
from mmfusion.pipeline_mmfusion import TASK, save_pipeline_code
from mmfusion.training.arguments import ModelArguments
from mmfusion.training.collator import MMFusionCollator
from mmfusion.training.inputs import prepare_model_inputs
from mmfusion.training.setup import build_processor
from mmfusion.training.tokenization import train_wordpiece_tokenizer

MAX_TEXT_LENGTH = 128
TOKENIZER_LIMIT = 512  # BERT's, and the small text tower's positions
WORDS = ["".join(pair) for pair in itertools.product("abcdefghijklmnopqrst", repeat=2)][:300]
LONG_CAPTION = " ".join(WORDS)  # 300 distinct vocabulary words: 302 tokens with [CLS] and [SEP]
# One colour: resizing it is exact, so training's cached uint8 pixels are the processor's float pixels.
IMAGE = Image.new("RGB", (40, 36), (200, 30, 30))
LABELS = {0: "not_hateful", 1: "hateful"}


def long_caption_tokenizer():
    """Every word one token (vocabulary of all 300 words), with a 512-token limit like BERT's."""
    return train_wordpiece_tokenizer(WORDS, vocab_size=400, model_max_length=TOKENIZER_LIMIT)


def softmax(logits: np.ndarray) -> np.ndarray:
    exponentials = np.exp(logits - logits.max(-1, keepdims=True))
    return exponentials / exponentials.sum(-1, keepdims=True)


class TrainedAt128:
    """A tiny model, the logits training computed for the long caption, the checkpoint saved after training, and
    the logits of the caption cut at 128 and 512 tokens, computed directly."""

    def __init__(self, folder):
        tokenizer = long_caption_tokenizer()
        processor = MMFusionProcessor(default_image_processor(IMAGE_SIZE), tokenizer)
        torch.manual_seed(0)
        model = tiny_model("early", text_config=tiny_text_config(len(tokenizer)), id2label=LABELS).eval()
        with torch.no_grad():
            model.classifier.weight.mul_(10)  # a random model's logits are tiny; make the differences show

        # Training's input path: tokens cached at --max_text_length, then the training collator.
        features = datasets.Features(
            {
                "image": datasets.Image(),
                "text": datasets.Value("string"),
                "label": datasets.ClassLabel(names=["a", "b"]),
            }
        )
        split = datasets.Dataset.from_dict({"image": [IMAGE], "text": [LONG_CAPTION], "label": [0]}, features=features)
        prepared = prepare_model_inputs(
            split, processor, model, max_length=MAX_TEXT_LENGTH, cache_dir=folder / "inputs"
        )
        self.training_length = int(prepared[0]["length"])
        batch = MMFusionCollator.for_processor(processor)([prepared[0]])
        batch.pop("labels")
        with torch.no_grad():
            self.training_logits = model(**batch).logits.numpy()

        # Saved as the Trainer saves it after training: the model with its processor, then the pipeline code.
        self.checkpoint = folder / "checkpoint"
        model.save_pretrained(self.checkpoint)
        processor.save_pretrained(self.checkpoint)
        save_pipeline_code(self.checkpoint)

        pixel_values = processor.image_processor(IMAGE, return_tensors="pt")["pixel_values"]
        reference = long_caption_tokenizer()  # a fresh tokenizer, cut explicitly

        def logits_cut_at(length: int) -> np.ndarray:
            text = reference(LONG_CAPTION, truncation=True, max_length=length, return_tensors="pt")
            with torch.no_grad():
                return model(**text, pixel_values=pixel_values).logits.numpy()

        self.expected = logits_cut_at(MAX_TEXT_LENGTH)
        self.untruncated = logits_cut_at(TOKENIZER_LIMIT)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> TrainedAt128:
    trained = TrainedAt128(tmp_path_factory.mktemp("text-path"))
    # The test can fail: the tokens past 128 do move this model's logits and probabilities.
    assert np.abs(trained.untruncated - trained.expected).max() > 1e-2
    assert np.abs(softmax(trained.untruncated) - softmax(trained.expected)).max() > 1e-3
    return trained


def test_training_tokenizes_at_max_text_length(trained):
    assert trained.training_length == MAX_TEXT_LENGTH
    assert_close(trained.training_logits, trained.expected, atol=1e-5, rtol=1e-5)


def test_the_saved_processor_truncates_where_training_did(trained):
    config = json.loads((trained.checkpoint / "tokenizer_config.json").read_text())
    assert config["model_max_length"] == MAX_TEXT_LENGTH
    processor = AutoProcessor.from_pretrained(trained.checkpoint, trust_remote_code=True)
    assert processor(text=LONG_CAPTION)["input_ids"].shape == (1, MAX_TEXT_LENGTH)


def test_predictor_gives_the_training_logits(trained):
    predictor = MMFusionPredictor.from_pretrained(trained.checkpoint, device="cpu")
    probabilities = predictor.predict_probabilities([IMAGE], [LONG_CAPTION])
    np.testing.assert_allclose(probabilities, softmax(trained.expected.astype(np.float64)), atol=1e-6)


def test_pipeline_gives_the_training_logits(trained):
    classify = pipeline(TASK, model=str(trained.checkpoint), trust_remote_code=True, device="cpu")
    scores = classify({"image": IMAGE, "text": LONG_CAPTION}, function_to_apply="none")
    logits = [next(s["score"] for s in scores if s["label"] == LABELS[index]) for index in sorted(LABELS)]
    np.testing.assert_allclose(logits, trained.expected[0], atol=1e-5, rtol=1e-5)


def test_onnx_export_gives_the_training_logits(trained, tmp_path):
    info = export_onnx(trained.checkpoint, tmp_path)
    predictor = MMFusionPredictor.from_pretrained(tmp_path, backend="onnx")
    probabilities = predictor.predict_probabilities([IMAGE], [LONG_CAPTION])
    np.testing.assert_allclose(probabilities, softmax(trained.expected.astype(np.float64)), atol=1e-5)
    # the export folder's processor files carry the limit, and the graph is traced for captions up to it
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["model_max_length"] == MAX_TEXT_LENGTH
    assert info.max_caption_length == MAX_TEXT_LENGTH


def test_train_py_sets_the_limit_once_on_the_processor_it_saves(tmp_path):
    """train.py's route: `build_processor(..., max_text_length=)` before training, saved with the checkpoint."""
    long_caption_tokenizer().save_pretrained(tmp_path / "text-tower")  # a pretrained text tower's tokenizer (512)
    model_args = ModelArguments(text_model_name_or_path=str(tmp_path / "text-tower"))
    processor = build_processor(model_args, IMAGE_SIZE, None, max_text_length=MAX_TEXT_LENGTH)
    processor.save_pretrained(tmp_path / "checkpoint")
    reloaded = AutoProcessor.from_pretrained(tmp_path / "checkpoint", trust_remote_code=True)
    assert reloaded.tokenizer.model_max_length == MAX_TEXT_LENGTH
    assert reloaded(text=LONG_CAPTION)["input_ids"].shape == (1, MAX_TEXT_LENGTH)
    # without a limit, the tokenizer's own; a limit above the tokenizer's own (CLIP's 77) does not raise it
    assert build_processor(model_args, IMAGE_SIZE, None).tokenizer.model_max_length == TOKENIZER_LIMIT
    assert build_processor(model_args, IMAGE_SIZE, None, max_text_length=1000).tokenizer.model_max_length == 512
