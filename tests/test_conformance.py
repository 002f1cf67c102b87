"""transformers' own common tests (ModelTesterMixin, ConfigTester, ProcessorTesterMixin) run against every fusion.

The suite comes from the transformers source distribution of the installed version (see `conformance_suite.py`);
where it cannot be obtained the tests skip and say why. One model test class per fusion in the registry, so a fusion
added later is covered without editing this file. Exclusions are by test name, each with its reason, in `EXCLUDED`.
"""

from __future__ import annotations

import unittest

import pytest
import torch
from conformance_suite import SuiteUnavailable, load_common_suite
from tiny_models import IMAGE_SIZE, tiny_config, tiny_text_config, tiny_tokenizer, tiny_vision_config
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
    MODEL_MAPPING_NAMES,
)

from mmfusion import FUSIONS, MMFusionConfig, MMFusionForClassification, MMFusionModel, MMFusionProcessor
from mmfusion.processing_mmfusion import default_image_processor

try:
    modeling_common, configuration_common, processing_common = load_common_suite()
except SuiteUnavailable as error:
    pytest.skip(f"transformers' common test suite is unavailable: {error}", allow_module_level=True)

ModelTesterMixin = modeling_common.ModelTesterMixin
ConfigTester = configuration_common.ConfigTester
ProcessorTesterMixin = processing_common.ProcessorTesterMixin

# Common tests whose assumption does not fit a text tower + vision tower model, by name, with the reason.
EXCLUDED = {
    "test_get_image_features_attentions": "the vision towers are CNNs (ResNet): they have no attention weights",
    "test_load_with_mismatched_shapes": "ends by calling the model on input_ids alone; an image+text model needs the image",
}
# Per fusion, by test name or name prefix (parametrised tests), with the reason: the unimodal baselines build one
# tower only, so the common tests of the other tower's outputs have nothing to check.
_NO_VISION_TOWER = "the text-only baseline has no vision tower (get_image_features raises, by design)"
_NO_TEXT_TOWER = (
    "the image-only baseline has no text tower: no word embeddings, text attentions or text hidden states "
    "(the ResNet tower has no attention and no gradient checkpointing)"
)
EXCLUDED_BY_FUSION = {
    "text": dict.fromkeys(
        ("test_get_image_features_hidden_states", "test_get_image_features_output_"), _NO_VISION_TOWER
    ),
    "image": dict.fromkeys(
        (
            "test_attention_outputs",
            "test_eager_matches_sdpa_inference_",
            "test_gradient_checkpointing_",
            "test_training_gradient_checkpointing",
            "test_peft_gradient_checkpointing_enable_disable",
            "test_hidden_states_output",
            "test_inputs_embeds",
            "test_model_get_set_embeddings",
            "test_resize_tokens_embeddings",
            "test_retain_grad_hidden_states_attentions",
            "test_sdpa_can_dispatch_composite_models",
        ),
        _NO_TEXT_TOWER,
    ),
}


def _excluded_tests(fusion: str) -> dict[str, str]:
    """Test name -> reason for one fusion: `EXCLUDED`, plus its own exclusions matched by name prefix."""
    excluded = dict(EXCLUDED)
    for prefix, reason in EXCLUDED_BY_FUSION.get(fusion, {}).items():
        excluded.update({name: reason for name in dir(ModelTesterMixin) if name.startswith(prefix)})
    return excluded


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Models this small only lose time to thread synchronisation (the module runs about 2.5x faster)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class VisionTowerTester:
    """What the common suite asks of an image model tester, for the ResNet tower (its stages are its layers)."""

    def __init__(self, parent):
        self.parent = parent
        self.num_hidden_layers = len(parent.vision_config.depths)

    def prepare_config_and_inputs_for_common(self):
        config, inputs = self.parent.prepare_config_and_inputs_for_common()
        return config, {"pixel_values": inputs["pixel_values"]}


class MMFusionModelTester:
    """Tiny configs and inputs for one fusion: a 2-layer BERT (width 32, 4 heads) and a 3-stage ResNet at 32 px."""

    batch_size = 3
    seq_length = 7
    is_training = True

    def __init__(self, parent, fusion: str):
        self.parent = parent
        self.fusion = fusion
        self.text_config = tiny_text_config()
        self.vision_config = tiny_vision_config()
        self.hidden_size = self.text_config.hidden_size
        self.num_hidden_layers = self.text_config.num_hidden_layers
        self.num_attention_heads = self.text_config.num_attention_heads
        self.vocab_size = self.text_config.vocab_size
        self.num_image_tokens = 4
        if FUSIONS[fusion].encodes_image_tokens:
            # the text encoder runs over caption and image tokens together
            self.encoder_seq_length = self.seq_length + self.num_image_tokens
        self.vision_model_tester = VisionTowerTester(self)

    def get_config(self):
        return tiny_config(
            self.fusion,
            text_config=self.text_config.to_dict(),
            vision_config=self.vision_config.to_dict(),
            num_image_tokens=self.num_image_tokens,
            fusion_map_dim=32,  # align's default (RGCL's 1024) would pass the common tests' 1M-parameter cap
        )

    def prepare_config_and_inputs_for_common(self):
        generator = torch.Generator().manual_seed(0)
        input_ids = torch.randint(3, self.vocab_size, (self.batch_size, self.seq_length), generator=generator)
        attention_mask = torch.ones_like(input_ids)
        attention_mask[0, -2:] = 0  # one padded caption
        pixel_values = torch.randn(self.batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values}
        return self.get_config(), inputs


class MMFusionConformanceBase(ModelTesterMixin):
    """ModelTesterMixin for one fusion; `fusion` is set by the subclasses built below."""

    fusion: str
    all_model_classes = (MMFusionModel, MMFusionForClassification)
    additional_model_inputs = ["pixel_values"]
    _is_composite = True
    # `get_image_features` returns the tower's own last hidden state, which is (B, C, H, W) for a CNN: the shape
    # check reads the channels from the last axis.
    skip_test_image_features_output_shape = True

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        # The common tests recognise a base model (no loss: no training test) and a sequence classifier (labels
        # are added) by their names in transformers' Auto mappings: list ours there while the class runs, as
        # transformers would if mmfusion were one of its models.
        MODEL_MAPPING_NAMES[MMFusionConfig.model_type] = MMFusionModel.__name__
        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES[MMFusionConfig.model_type] = MMFusionForClassification.__name__

    @classmethod
    def tearDownClass(cls):
        MODEL_MAPPING_NAMES.pop(MMFusionConfig.model_type, None)
        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES.pop(MMFusionConfig.model_type, None)
        super().tearDownClass()

    def setUp(self):
        self.model_tester = MMFusionModelTester(self, self.fusion)
        self.config_tester = ConfigTester(
            self,
            config_class=MMFusionConfig,
            has_text_modality=False,
            common_properties=["text_config", "vision_config", "fusion", "num_image_tokens"],
            fusion=self.fusion,
            num_image_tokens=1,
            image_size=IMAGE_SIZE,
            fusion_hidden_size=16,
            fusion_num_heads=2,
        )

    def test_config(self):
        self.config_tester.run_common_tests()


def conformance_test_class(fusion: str, module: str = __name__) -> type:
    """The common suite for one registered fusion, as a `unittest.TestCase` to bind to a name in a test module."""
    name = f"{fusion.title().replace('_', '')}FusionConformanceTest"
    namespace = {"fusion": fusion, "__module__": module, "__qualname__": name}
    for test, reason in _excluded_tests(fusion).items():
        namespace[test] = unittest.skip(f"excluded: {reason}")(lambda self: None)
    return type(name, (MMFusionConformanceBase, unittest.TestCase), namespace)


for _fusion in (name for name, fusion in FUSIONS.items() if not fusion.joint_encoder):  # joint: test_joint.py
    _test_class = conformance_test_class(_fusion)
    globals()[_test_class.__name__] = _test_class


class MMFusionProcessorConformanceTest(ProcessorTesterMixin, unittest.TestCase):
    processor_class = MMFusionProcessor

    @classmethod
    def _setup_tokenizer(cls):
        return tiny_tokenizer()

    @classmethod
    def _setup_image_processor(cls):
        return default_image_processor(IMAGE_SIZE)
