import json

import pytest
import torch
from tiny_models import tiny_config, tiny_text_config, tiny_vision_config
from transformers import AutoConfig, BertConfig, ResNetConfig

from mmfusion import MMFusionConfig, MMFusionForClassification
from mmfusion.configuration_mmfusion import FUSIONS
from mmfusion.fusions import fusion_names


def test_defaults_are_bert_base_and_resnet50_early_fusion():
    config = MMFusionConfig()
    assert isinstance(config.text_config, BertConfig) and config.text_config.hidden_size == 768
    assert isinstance(config.vision_config, ResNetConfig) and config.vision_config.hidden_sizes[-1] == 2048
    assert (config.fusion, config.num_image_tokens, config.image_size) == ("early", 49, 224)


def _comparable(config):
    values = config.to_dict()
    values.pop("_name_or_path", None)  # where it was loaded from
    return values


@pytest.mark.parametrize("fusion", fusion_names(joint_encoder=False))  # joint: tests/test_joint.py
def test_round_trip_dict_json_and_disk(fusion, tmp_path):
    config = tiny_config(
        fusion,
        num_labels=3,
        freeze_vision_encoder=True,
        modality_dropout=0.2,
        id2label={0: "negative", 1: "neutral", 2: "positive"},
    )
    from_dict = MMFusionConfig.from_dict(config.to_dict())
    from_json = MMFusionConfig.from_dict(json.loads(config.to_json_string()))
    config.save_pretrained(tmp_path)
    from_disk = AutoConfig.from_pretrained(tmp_path)
    for loaded in (from_dict, from_json, from_disk):
        assert isinstance(loaded, MMFusionConfig)
        assert _comparable(loaded) == _comparable(config)
        assert isinstance(loaded.text_config, BertConfig) and isinstance(loaded.vision_config, ResNetConfig)
        assert loaded.id2label[2] == "positive" and loaded.label2id["neutral"] == 1


def test_sub_configs_accept_plain_dicts():
    config = MMFusionConfig(
        text_config=tiny_text_config().to_dict(),
        vision_config=tiny_vision_config().to_dict(),
        num_image_tokens=4,
        image_size=32,
    )
    assert config.text_config.hidden_size == 32 and config.vision_feature_size == 32


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"fusion": "fusion"}, "Unknown fusion type 'fusion'"),
        ({"num_image_tokens": 5}, "positive square"),
        ({"num_image_tokens": 0}, "positive square"),
        ({"num_image_tokens": 9}, "more image tokens than the vision tower's 2x2 feature grid"),
        ({"fusion": "attention", "fusion_hidden_size": 30, "fusion_num_heads": 4}, "divisible by fusion_num_heads"),
        ({"text_config": tiny_text_config(is_decoder=True)}, "bidirectional encoder"),
        ({"modality_dropout": 1.0}, "modality_dropout"),
    ],
)
def test_invalid_configs_fail_at_construction(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


def test_text_hidden_size_must_split_into_heads():
    text_config = tiny_text_config()
    text_config.num_attention_heads = 5  # 32 is not divisible by 5
    with pytest.raises(ValueError, match="hidden_size"):
        tiny_config(text_config=text_config)


def test_concat_fusion_ignores_token_grid_limits():
    # concat fusion pools the whole grid, so num_image_tokens does not have to fit in it
    assert tiny_config("concat", num_image_tokens=49).fusion == "concat"


def test_num_image_tokens_defaults_to_the_towers_grid_at_most_49():
    # issue 10: a small tower at 64 px works with the defaults (its grid is 2x2 at 32 px, 4x4 at 64 px)
    config = MMFusionConfig(text_config=tiny_text_config(), vision_config=tiny_vision_config(), image_size=64)
    assert config.num_image_tokens == 16
    model = MMFusionForClassification(config).eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[2, 7, 9, 3]]), pixel_values=torch.zeros(1, 3, 64, 64)).logits
    assert logits.shape == (1, 2)
    assert MMFusionConfig(vision_config=tiny_vision_config(), image_size=512).num_image_tokens == 49  # 16x16 grid
    assert MMFusionConfig().num_image_tokens == 49  # resnet-50 at 224 px: 7x7


def test_saved_configs_with_explicit_image_tokens_keep_loading(tmp_path):
    tiny_config(num_image_tokens=4).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["num_image_tokens"] == 4  # the resolved number is written, so reloading never re-derives it
    saved["num_image_tokens"] = 1
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert AutoConfig.from_pretrained(tmp_path).num_image_tokens == 1


def test_the_fusion_registry_drives_validation_and_the_model():
    assert len(FUSIONS) >= 8
    for name, fusion in FUSIONS.items():
        if fusion.joint_encoder:  # needs a vision-language model: tests/test_joint.py
            continue
        assert fusion.name == name
        assert fusion.title and fusion.summary and fusion.origin
        assert fusion.description.format(**tiny_config(name).to_dict())
        model = MMFusionForClassification(tiny_config(name))
        assert type(model.mmfusion.fusion) is fusion
    with pytest.raises(ValueError, match="expected one of " + ", ".join(FUSIONS)):
        tiny_config("middle")
