"""The fusion contract: a fusion written only here, in a test module, is one class, and that is all it takes.

It registers by being defined, gets its setting's default, validation, weight init and `train.py` flag from its own
declaration, trains a few steps through the Trainer, saves and loads, and passes transformers' common suite — with no
other file touched. It is taken out of the registry while other test modules are collected and run (they
parametrise over `FUSIONS`, and a fusion defined outside `fusions.py` cannot load as remote code).
"""

from __future__ import annotations

import pytest
import torch
from test_conformance import conformance_test_class
from tiny_models import CAPTIONS, IMAGE_SIZE, tiny_config, tiny_model, tiny_processor
from torch import nn
from torch.testing import assert_close
from transformers import TrainingArguments

from mmfusion import FUSIONS, EmbeddingFusion, FusionSetting, MMFusionForClassification
from mmfusion.fusions import fusion_settings, init


class GatedSumFusion(EmbeddingFusion):
    """Both embeddings mapped to one width and summed, the image's map scaled by a learned gate that starts at 1/2."""

    name = "gated_sum"
    title = "gated sum"
    summary = "text and image maps summed, the image's through a learned gate"
    origin = "the fusion contract's test"
    description = "The text and image embeddings are mapped to {gated_sum_width} dimensions and summed."
    settings = {"gated_sum_width": FusionSetting(12, "Width of the shared space.")}

    def __init__(self, config):
        super().__init__()
        self.text_map = nn.Linear(config.text_embed_dim, config.gated_sum_width)
        self.image_map = nn.Linear(config.image_embed_dim, config.gated_sum_width)
        self.gate = nn.Parameter(torch.empty(1))
        self.output_size = config.gated_sum_width

    @classmethod
    def validate(cls, config) -> None:
        if config.gated_sum_width < 1:
            raise ValueError(f"gated_sum_width must be >= 1, got {config.gated_sum_width}")

    def init_weights(self) -> None:
        init.constant_(self.gate, 0.5)

    def fuse(self, text_embeds, image_embeds):
        return torch.tanh(self.text_map(text_embeds)) + self.gate * torch.tanh(self.image_map(image_embeds))


# Bound here so that pytest collects the common suite for it, then out of the registry until this module runs.
GatedSumFusionConformanceTest = conformance_test_class("gated_sum", __name__)
FUSIONS.pop("gated_sum")


@pytest.fixture(autouse=True, scope="module")
def registered():
    FUSIONS["gated_sum"] = GatedSumFusion
    yield
    FUSIONS.pop("gated_sum")


def test_defining_the_class_registers_it_with_its_setting():
    assert FUSIONS["gated_sum"] is GatedSumFusion
    assert fusion_settings()["gated_sum_width"].default == 12
    config = tiny_config("gated_sum")
    assert config.gated_sum_width == 12
    assert tiny_config("gated_sum", gated_sum_width=7).gated_sum_width == 7
    with pytest.raises(ValueError, match="gated_sum_width must be >= 1"):
        tiny_config("gated_sum", gated_sum_width=0)
    model = MMFusionForClassification(config)
    assert model.mmfusion.fusion.gate.item() == 0.5  # its own init_weights ran
    assert model.classifier.in_features == 12


def test_a_setting_name_means_one_thing():
    with pytest.raises(ValueError, match="fusion_map_dim"):

        class Clashing(EmbeddingFusion):
            name = "clashing"
            settings = {"fusion_map_dim": FusionSetting(64, "another meaning")}

    assert "clashing" not in FUSIONS


def test_train_py_offers_its_flag_and_builds_it():
    from mmfusion.training.arguments import argument_parser
    from mmfusion.training.setup import build_model

    model_args, _, _ = argument_parser().parse_args_into_dataclasses(
        args=["--fusion", "gated_sum", "--gated_sum_width", "5", "--output_dir", "unused"]
    )
    model = build_model(model_args, ["a", "b"], vocab_size=120, image_size=IMAGE_SIZE)
    assert model.config.fusion == "gated_sum" and model.config.gated_sum_width == 5


def images(count: int = len(CAPTIONS)):
    generator = torch.Generator().manual_seed(0)
    return [
        (torch.rand(IMAGE_SIZE, IMAGE_SIZE, 3, generator=generator) * 255).to(torch.uint8).numpy()
        for _ in range(count)
    ]


def test_trains_through_the_trainer_saves_and_loads(tmp_path):
    from mmfusion.training.trainer import MMFusionTrainer

    torch.manual_seed(0)
    model = tiny_model("gated_sum")
    processor = tiny_processor()
    encoded = processor(images=images(), text=CAPTIONS)
    labels = [0, 1, 0, 1, 0, 1]
    rows = [
        {
            "input_ids": encoded["input_ids"][i],
            "attention_mask": encoded["attention_mask"][i],
            "token_type_ids": encoded["token_type_ids"][i],
            "pixel_values": encoded["pixel_values"][i],
            "labels": torch.tensor(labels[i]),
        }
        for i in range(len(CAPTIONS))
    ]
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"),
        max_steps=8,
        per_device_train_batch_size=6,
        learning_rate=1e-2,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
    )
    trainer = MMFusionTrainer(model=model, args=args, train_dataset=rows)
    gate_before = model.mmfusion.fusion.gate.item()
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses[-1] < losses[0]
    assert model.mmfusion.fusion.gate.item() != gate_before  # the fusion's own parameter learned

    model.eval()
    model.save_pretrained(tmp_path / "checkpoint")
    reloaded = MMFusionForClassification.from_pretrained(tmp_path / "checkpoint").eval()
    assert reloaded.config.gated_sum_width == 12
    inputs = {key: value for key, value in encoded.items()}
    assert_close(reloaded(**inputs).logits, model(**inputs).logits)


def test_a_fusion_from_elsewhere_gets_the_fresh_layer_learning_rate_split_the_model_declares():
    """`--fusion_learning_rate` asks the model which parameters are its towers' (projections included)."""
    from mmfusion.training.trainer import MMFusionTrainer

    model = tiny_model("gated_sum", projection_dim=8)
    args = TrainingArguments(output_dir="unused", learning_rate=1e-4, report_to="none", use_cpu=True)
    optimizer = MMFusionTrainer(model=model, args=args, fusion_learning_rate=1e-2).create_optimizer()
    names = {id(p): name for name, p in model.named_parameters()}
    rates = {names[id(p)]: group["lr"] for group in optimizer.param_groups for p in group["params"]}
    assert rates["mmfusion.text_projection.weight"] == rates["mmfusion.visual_projection.weight"] == 1e-4
    assert (
        rates["mmfusion.fusion.gate"] == rates["mmfusion.fusion.text_map.weight"] == rates["classifier.bias"] == 1e-2
    )


# Where fusions are listed for people: these files may name fusions, but never list several by hand (a list goes
# stale when a fusion is added); lists come from the registry (`fusion_names`, `fusion_table`).
LISTING_FILES = ("README.md", "pyproject.toml", "train.py", "app.py", "mmfusion", "tests")
README_TABLE_START = "<!-- fusion table: generated from the registry by mmfusion.fusions.fusion_table() -->"
README_TABLE_END = "<!-- end of fusion table -->"


def hand_written_fusion_lists(text: str) -> list[str]:
    """Runs of three or more registered fusion names in a row (`a`, `b` and `c`; "a", "b"; a/b/c)."""
    import re

    name = "(?:" + "|".join(re.escape(n) for n in sorted(FUSIONS, key=len, reverse=True)) + ")"
    quoted = rf"[`'\"]?{name}[`'\"]?"
    separator = r"\s*(?:,|/|\band\b|\bor\b|\|)\s*(?:and\s+|or\s+)?"
    return [match.group(0) for match in re.finditer(rf"\b{quoted}(?:{separator}{quoted}){{2,}}", text)]


def test_no_fusion_list_is_written_by_hand(repo_root):
    found = {}
    for entry in LISTING_FILES:
        path = repo_root / entry
        files = sorted(path.rglob("*.py")) + sorted(path.rglob("*.md")) if path.is_dir() else [path]
        for file in files:
            if file.name == "fusions.py" and file.parent.name == "mmfusion":
                continue  # the registry itself
            text = file.read_text(encoding="utf-8")
            if file.name == "README.md" and README_TABLE_START in text:
                text = text.split(README_TABLE_START)[0] + text.split(README_TABLE_END)[-1]
            if file == repo_root / "tests" / "test_fusion_contract.py":
                continue  # this test's own examples of what it catches
            lists = hand_written_fusion_lists(text)
            if lists:
                found[str(file.relative_to(repo_root))] = lists
    assert not found, f"fusion lists written by hand (read the registry instead): {found}"


def test_the_list_detector_catches_the_ways_lists_are_written():
    assert hand_written_fusion_lists("`concat`, `cross`, `align` and `late` read one vector")
    assert hand_written_fusion_lists('choices=["early", "concat", "attention"]')
    assert hand_written_fusion_lists("early, concat and attention fusion")
    assert hand_written_fusion_lists("early/concat/attention: let the image in")
    assert not hand_written_fusion_lists("the text and image embeddings, early in training")


def test_the_readme_table_is_the_registry(repo_root):
    from mmfusion.fusions import fusion_table

    FUSIONS.pop("gated_sum")  # the README lists the fusions the package ships
    try:
        table = fusion_table()
    finally:
        FUSIONS["gated_sum"] = GatedSumFusion
    readme = (repo_root / "README.md").read_text(encoding="utf-8")
    assert README_TABLE_START in readme, "the README's fusion table lost its markers"
    written = readme.split(README_TABLE_START)[1].split(README_TABLE_END)[0].strip()
    assert written == table, "README fusion table differs from the registry: paste mmfusion.fusions.fusion_table()"
