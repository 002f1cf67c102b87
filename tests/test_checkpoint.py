"""Self-contained checkpoints: loading two pretrained towers, Auto classes, and a Hub user without mmfusion."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from PIL import Image
from tiny_models import IMAGE_SIZE, tiny_model, tiny_processor, tiny_text_config, tiny_vision_config
from torch.testing import assert_close
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    AutoProcessor,
    BertModel,
    ResNetModel,
)

from mmfusion import MMFusionForClassification, MMFusionModel, MMFusionProcessor
from mmfusion.fusions import fusion_names
from mmfusion.torchvision_resnet import convert_torchvision_resnet_state_dict

FUSIONS = fusion_names(joint_encoder=False)  # every two-tower fusion (joint: tests/test_joint.py)


def example_pair():
    return Image.new("RGB", (48, 40), (200, 30, 30)), "a cat sits on the mat"


@pytest.mark.parametrize("fusion", FUSIONS)
def test_saved_folder_holds_weights_config_processor_and_code(fusion, tmp_path):
    tiny_model(fusion).save_pretrained(tmp_path)
    tiny_processor().save_pretrained(tmp_path)
    names = {path.name for path in tmp_path.iterdir()}
    assert {"model.safetensors", "config.json", "processor_config.json", "tokenizer.json"} <= names
    assert {"configuration_mmfusion.py", "modeling_mmfusion.py", "processing_mmfusion.py"} <= names
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForSequenceClassification"] == "modeling_mmfusion.MMFusionForClassification"
    assert auto_map["AutoModel"] == "modeling_mmfusion.MMFusionModel"


def test_installed_package_registers_auto_classes(tmp_path):
    tiny_model("concat").save_pretrained(tmp_path)
    tiny_processor().save_pretrained(tmp_path)
    assert isinstance(AutoModelForSequenceClassification.from_pretrained(tmp_path), MMFusionForClassification)
    assert isinstance(AutoModel.from_pretrained(tmp_path), MMFusionModel)
    assert isinstance(AutoProcessor.from_pretrained(tmp_path), MMFusionProcessor)
    assert AutoConfig.for_model("mmfusion").fusion == "early"


HUB_USER_SCRIPT = textwrap.dedent(
    """
    import importlib.util, json, os, sys
    # A Hub user: transformers installed, mmfusion not. Drop the editable-install finder and the repository path.
    sys.meta_path = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
    sys.path = [p for p in sys.path if p and os.path.realpath(p) != os.path.realpath(sys.argv[1])]
    assert importlib.util.find_spec("mmfusion") is None, "mmfusion is importable"
    import torch
    from PIL import Image
    from transformers import AutoModelForSequenceClassification, AutoProcessor
    results = {}
    for folder in sys.argv[2:]:
        model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
        inputs = processor(images=Image.new("RGB", (48, 40), (200, 30, 30)), text="a cat sits on the mat")
        with torch.no_grad():
            results[folder] = model(**inputs).logits.tolist()
    assert "mmfusion" not in sys.modules
    print(json.dumps(results))
    """
)


def logits_seen_by_a_hub_user(repo_root, tmp_path, folders: list[str]) -> dict[str, list]:
    """Run HUB_USER_SCRIPT in a process where mmfusion cannot be imported; the logits it got, by folder."""
    script = tmp_path / "hub_user.py"
    script.write_text(HUB_USER_SCRIPT)
    result = subprocess.run(
        [sys.executable, "-I", str(script), str(repo_root), *folders],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_hub_user_without_mmfusion_loads_with_trust_remote_code(tmp_path, repo_root):
    expected, folders = {}, []
    image, text = example_pair()
    for fusion in FUSIONS:
        folder = tmp_path / fusion
        model, processor = tiny_model(fusion).eval(), tiny_processor()
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        with torch.no_grad():
            expected[str(folder)] = model(**processor(images=image, text=text)).logits
        folders.append(str(folder))
    got = logits_seen_by_a_hub_user(repo_root, tmp_path, folders)
    for folder in folders:
        assert_close(torch.tensor(got[folder]), expected[folder])


def test_from_text_vision_pretrained_loads_transformers_towers(tmp_path):
    text_tower, vision_tower = BertModel(tiny_text_config()), ResNetModel(tiny_vision_config())
    text_tower.save_pretrained(tmp_path / "text")
    vision_tower.save_pretrained(tmp_path / "vision")
    model = MMFusionForClassification.from_text_vision_pretrained(
        str(tmp_path / "text"),
        str(tmp_path / "vision"),
        fusion="early",
        num_labels=2,
        num_image_tokens=4,
        image_size=IMAGE_SIZE,
    )
    for tower, source in ((model.mmfusion.text_model, text_tower), (model.mmfusion.vision_model, vision_tower)):
        loaded = tower.state_dict()
        for name, value in source.state_dict().items():
            assert torch.equal(loaded[name], value), name
    assert model.config.num_labels == 2 and model.config.text_config.hidden_size == 32


def test_from_text_vision_pretrained_converts_torchvision_resnets(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(weights=None).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so a mis-mapped buffer shows
        for module in reference.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 1.5)
    torch.save(reference.state_dict(), tmp_path / "resnet18.pth")
    BertModel(tiny_text_config()).save_pretrained(tmp_path / "text")
    model = MMFusionForClassification.from_text_vision_pretrained(
        str(tmp_path / "text"),
        "torchvision/resnet18",
        torchvision_weights=str(tmp_path / "resnet18.pth"),
        fusion="concat",
        num_labels=2,
    ).eval()
    converted = convert_torchvision_resnet_state_dict(reference.state_dict())
    loaded = model.mmfusion.vision_model.state_dict()
    assert converted.keys() == loaded.keys()
    assert all(torch.equal(loaded[key], value) for key, value in converted.items())
    # the converted tower computes torchvision's feature map
    pixels = torch.randn(2, 3, 64, 64)
    trunk = torch.nn.Sequential(*list(reference.children())[:-2])
    with torch.no_grad():
        assert_close(model.get_image_features(pixels).last_hidden_state, trunk(pixels), atol=1e-5, rtol=1e-4)
    assert model.config.vision_config.hidden_sizes == [64, 128, 256, 512]
