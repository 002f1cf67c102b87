"""fusion="joint": one vision-language model (a tiny random Qwen2-VL, built offline with a working processor) as the
only tower; LoRA through peft; merged and adapter checkpoints; the pipeline and mmfusion-predict on a merged one."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from PIL import Image
from test_checkpoint import logits_seen_by_a_hub_user
from tiny_vlms import tiny_idefics3_checkpoint, tiny_llava_checkpoint, tiny_qwen2_vl_checkpoint
from torch.testing import assert_close

from mmfusion import MMFusionForClassification, MMFusionProcessor
from mmfusion.fusions import DEFAULT_PROMPT_TEMPLATE
from mmfusion.vision_language import LORA_MARKER, language_model_of, lora_target_names

CAPTIONS = ["look how many people love you", "a cat sits on the mat", "the dog barks at the mailman", "a sunset"]
COLOURS = [(200, 20, 20), (20, 200, 20), (20, 20, 200), (200, 200, 20)]
LORA = dict(lora_r=4, lora_alpha=8, lora_dropout=0.0)


def images(sizes=((64, 48), (40, 56), (56, 56), (30, 44))):
    return [Image.new("RGB", size, colour) for size, colour in zip(sizes, COLOURS)]


class Joint:
    """A tiny joint model trained a few steps on a fixed batch (so its LoRA update is not zero), its processor, the
    base checkpoint's folder and the losses seen."""


@pytest.fixture(scope="module")
def joint(tmp_path_factory):
    state = Joint()
    state.base = tmp_path_factory.mktemp("tiny-qwen2-vl")
    tiny_qwen2_vl_checkpoint(state.base)
    torch.manual_seed(0)
    state.model = MMFusionForClassification.from_vision_language_pretrained(
        str(state.base),
        num_labels=2,
        id2label={0: "not_hateful", 1: "hateful"},
        joint_head_size=16,
        answer_loss_weight=1.0,
        classifier_dropout=0.0,
        **LORA,
    )
    state.processor = MMFusionProcessor.from_vision_language_pretrained(str(state.base), config=state.model.config)
    state.inputs = state.processor(images=images(), text=CAPTIONS)
    state.labels = torch.tensor([1, 0, 1, 0])
    trainable = [p for p in state.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    state.model.train()
    state.losses = []
    for _ in range(15):
        loss = state.model(**state.inputs, labels=state.labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        state.losses.append(loss.item())
    state.model.eval()
    with torch.no_grad():
        state.logits = state.model(**state.inputs).logits
    return state


def test_the_prompt_is_built_by_the_models_chat_template_with_the_caption_inside(joint):
    inner = joint.processor.vision_language_processor
    messages = [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": DEFAULT_PROMPT_TEMPLATE.format(caption="a cat")}],
        }
    ]
    (prompt,) = joint.processor.joint_prompts(["a cat"])
    assert prompt == inner.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert 'This is an image with: "a cat" written on it. Is it hateful?' in prompt
    assert prompt.index("<|image_pad|>") < prompt.index("a cat")  # image first
    assert prompt.endswith("<|im_start|>assistant\n")  # the generation prompt: the model would answer next
    # left padding: every row's last prompt token is the last position; the image's tokens are expanded
    mask = joint.inputs["attention_mask"]
    assert mask[:, -1].all() and not mask[:, 0].all()
    tokenizer = joint.processor.tokenizer
    decoded = tokenizer.decode(joint.inputs["input_ids"][0], skip_special_tokens=False)
    assert CAPTIONS[0] in decoded
    image_tokens = (joint.inputs["input_ids"] == tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum(-1)
    assert (image_tokens == joint.inputs["image_grid_thw"].prod(-1) // 4).all()


def test_the_pixel_limit_is_a_setting(joint, tmp_path):
    processor = MMFusionProcessor.from_vision_language_pretrained(str(joint.base), max_pixels=28 * 28)
    inputs = processor(images=[Image.new("RGB", (200, 200))], text=["x"])
    assert inputs["image_grid_thw"].prod().item() * 14 * 14 <= 28 * 28
    processor.save_pretrained(tmp_path)
    reloaded = MMFusionProcessor.from_pretrained(tmp_path)
    assert reloaded.vision_language_max_pixels == 28 * 28
    assert_close(reloaded(images=[Image.new("RGB", (200, 200))], text=["x"])["pixel_values"], inputs["pixel_values"])


def test_lora_trains_only_the_adapter_and_the_head_with_the_vision_tower_frozen(joint):
    model = joint.model
    # the sum of the head's cross-entropy and the answer-token loss (over the whole vocabulary, log 320 at start)
    assert joint.losses[-1] < joint.losses[0] - 0.5, joint.losses
    assert (joint.logits.argmax(-1) == joint.labels).all()  # the fixed batch is learnt
    trainable = {name: p.numel() for name, p in model.named_parameters() if p.requires_grad}
    vision_language = model.mmfusion.vision_language_model
    targets = lora_target_names(vision_language)  # the names LoRA wraps
    linears = {name: module.base_layer for name, module in vision_language.named_modules() if name in targets}
    lora_count = sum(
        LORA["lora_r"] * (linears[name].in_features + linears[name].out_features) for name in targets
    )  # A: r x in, B: out x r
    head_count = sum(p.numel() for p in model.mmfusion.fusion.parameters()) + sum(
        p.numel() for p in model.classifier.parameters()
    )
    assert sum(trainable.values()) == lora_count + head_count
    assert all(LORA_MARKER in name or not name.startswith("mmfusion.vision_language_model") for name in trainable)
    # every linear layer of the language model has LoRA, nothing outside it does
    language = {id(m) for m in language_model_of(vision_language).modules()}
    lora_layers = [name for name in targets if id(linears[name]) in language and LORA_MARKER not in name]
    assert len(lora_layers) == len(targets) == 2 * 7  # q, k, v, o, gate, up, down in each of the 2 layers
    assert not any(p.requires_grad for module in model.mmfusion.vision_tower_modules() for p in module.parameters())


def test_gradient_checkpointing_trains_the_adapter(joint):
    model = joint.model
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    try:
        model.train()
        model.zero_grad()
        model(**joint.inputs, labels=joint.labels).loss.backward()
        grads = [p.grad for name, p in model.named_parameters() if LORA_MARKER in name]
        assert grads and all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    finally:
        model.gradient_checkpointing_disable()
        model.zero_grad()
        model.eval()


@pytest.fixture(scope="module")
def saved(joint, tmp_path_factory):
    folders = {}
    for layout in ("full", "adapter"):
        folder = tmp_path_factory.mktemp(f"joint-{layout}")
        joint.model.save_pretrained(folder, vision_language_weights=layout)
        joint.processor.save_pretrained(folder)
        folders[layout] = folder
    return folders


@pytest.mark.parametrize("layout", ["full", "adapter"])
def test_save_and_reload_give_the_same_logits(joint, saved, layout):
    config = json.loads((saved[layout] / "config.json").read_text())
    assert config["vision_language_weights"] == layout
    assert config["vision_language_model_name_or_path"] == str(joint.base)
    model = MMFusionForClassification.from_pretrained(saved[layout]).eval()
    processor = MMFusionProcessor.from_pretrained(saved[layout])
    with torch.no_grad():
        logits = model(**processor(images=images(), text=CAPTIONS)).logits
    assert_close(logits, joint.logits, atol=1e-5, rtol=1e-4)


def test_a_saved_checkpoint_names_its_keys_as_the_model_does(joint, tmp_path):
    """The Trainer reloads its best checkpoint with a plain non-strict `load_state_dict`: keys renamed to a VLM's
    legacy layout (transformers' default on save) would leave every language-model weight out without a word."""
    from safetensors.torch import load_file

    joint.model.save_pretrained(tmp_path)  # the default: LoRA unmerged, as the Trainer's checkpoints
    saved = load_file(tmp_path / "model.safetensors")
    assert set(saved) == set(joint.model.state_dict())
    result = joint.model.load_state_dict(saved, strict=False)
    assert not result.missing_keys and not result.unexpected_keys


def test_the_merged_checkpoint_really_merges_and_the_adapter_is_small(joint, saved):
    from safetensors.torch import load_file

    merged = load_file(saved["full"] / "model.safetensors")
    adapter = load_file(saved["adapter"] / "model.safetensors")
    assert not any(LORA_MARKER in key or ".base_layer." in key for key in merged)
    assert all(LORA_MARKER in key or not key.startswith("mmfusion.vision_language_model") for key in adapter)
    assert (saved["adapter"] / "model.safetensors").stat().st_size < 0.2 * (
        saved["full"] / "model.safetensors"
    ).stat().st_size
    # a LoRA update that training moved away from zero is in the merged weights: they differ from the base's
    base = MMFusionForClassification.from_vision_language_pretrained(str(joint.base), num_labels=2, use_lora=False)
    base_state = base.state_dict()
    loaded = MMFusionForClassification.from_pretrained(saved["full"]).state_dict()
    assert loaded.keys() == base_state.keys()  # no LoRA layer left
    changed = [k for k in base_state if "q_proj.weight" in k and not torch.equal(base_state[k], loaded[k])]
    assert len(changed) == 2  # both layers' q_proj


def test_a_hub_user_without_mmfusion_loads_the_merged_checkpoint(joint, saved, repo_root, tmp_path):
    got = logits_seen_by_a_hub_user(repo_root, tmp_path, [str(saved["full"])])
    image, text = Image.new("RGB", (48, 40), (200, 30, 30)), "a cat sits on the mat"
    with torch.no_grad():
        expected = joint.model(**joint.processor(images=image, text=text)).logits
    assert_close(torch.tensor(got[str(saved["full"])]), expected, atol=1e-5, rtol=1e-4)


def test_an_adapter_that_does_not_fit_its_base_stops_with_the_keys_named(joint, saved, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path / "old-layout"
    shutil.copytree(saved["adapter"], folder)
    weights = load_file(folder / "model.safetensors")
    # transformers 4's key layout for Qwen2-VL's language model: model.layers.* instead of model.language_model.*
    renamed = {key.replace(".model.language_model.", ".model."): value for key, value in weights.items()}
    save_file(renamed, folder / "model.safetensors")
    with pytest.raises(ValueError, match=r"does not fit its base model.*missing.*match nothing.*key layout"):
        MMFusionForClassification.from_pretrained(folder)
    # another LoRA configuration: the adapter lacks layers the config puts LoRA on
    config = json.loads((saved["adapter"] / "config.json").read_text())
    shutil.copy(saved["adapter"] / "model.safetensors", folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({**config, "lora_target_modules": "q_proj,fc9"}))
    with pytest.raises(ValueError, match="No linear layer|does not fit"):
        MMFusionForClassification.from_pretrained(folder)


def test_embed_gives_unit_vectors_of_the_heads_width(joint):
    with torch.no_grad():
        vectors = joint.model.embed(**joint.inputs)
    assert vectors.shape == (4, 16)
    assert_close(vectors.norm(dim=-1), torch.ones(4))


def test_the_pipeline_and_mmfusion_predict_run_on_the_merged_checkpoint(joint, saved, tmp_path):
    from transformers import pipeline

    image_path = tmp_path / "meme.png"
    images()[0].save(image_path)
    classify = pipeline("image-text-classification", model=str(saved["full"]), trust_remote_code=True, device="cpu")
    result = classify({"image": str(image_path), "text": CAPTIONS[0]})
    with torch.no_grad():
        expected = joint.model(**joint.processor(images=Image.open(image_path), text=CAPTIONS[0])).logits.softmax(-1)
    scores = {entry["label"]: entry["score"] for entry in result}
    assert scores["hateful"] == pytest.approx(expected[0, 1].item(), abs=1e-5)

    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        "".join(
            json.dumps({"id": str(i), "image": "meme.png", "text": caption}) + "\n"
            for i, caption in enumerate(CAPTIONS)
        )
    )
    output = tmp_path / "predictions.csv"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mmfusion.inference.predict",
            str(saved["full"]),
            "--input",
            str(rows),
            "--output",
            str(output),
            "--device",
            "cpu",
            "--cache-dir",
            str(tmp_path / "cache"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = output.read_text().splitlines()
    assert len(lines) == 1 + len(CAPTIONS) and lines[0].startswith("id,")


@pytest.mark.parametrize(
    "build, prompt_start, prompt_end",
    [
        (tiny_idefics3_checkpoint, "<|im_start|>User:<image>", "Assistant:"),  # SmolVLM's architecture
        (tiny_llava_checkpoint, "USER: <image>\n", "ASSISTANT:"),
    ],
    ids=["smolvlm-idefics3", "llava"],
)
def test_other_vlm_families_go_through_the_same_contract(tmp_path, build, prompt_start, prompt_end):
    """Idefics3 (SmolVLM: vision tower, connector, Llama) and LLaVA (CLIP tower, projector, Llama): prompt by the
    model's chat template, LoRA on the language model only, training on a fixed batch, merged save -> reload with
    the same logits."""
    build(tmp_path / "base")
    torch.manual_seed(0)
    model = MMFusionForClassification.from_vision_language_pretrained(
        str(tmp_path / "base"), num_labels=2, joint_head_size=16, answer_loss_weight=1.0, joint_pooling="mean", **LORA
    )
    processor = MMFusionProcessor.from_vision_language_pretrained(str(tmp_path / "base"), config=model.config)
    (prompt,) = processor.joint_prompts(["a cat"])
    assert prompt.startswith(prompt_start) and prompt.endswith(prompt_end) and '"a cat"' in prompt
    inputs = processor(images=images(), text=CAPTIONS)
    vision = {id(p) for module in model.mmfusion.vision_tower_modules() for p in module.parameters()}
    assert vision and not any(p.requires_grad for p in model.parameters() if id(p) in vision)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    labels = torch.tensor([1, 0, 1, 0])
    losses = []
    model.train()
    for _ in range(10):
        loss = model(**inputs, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.3, losses
    model.eval()
    with torch.no_grad():
        expected = model(**inputs).logits
    model.save_pretrained(tmp_path / "merged", vision_language_weights="full")
    processor.save_pretrained(tmp_path / "merged")
    reloaded = MMFusionForClassification.from_pretrained(tmp_path / "merged").eval()
    again = MMFusionProcessor.from_pretrained(tmp_path / "merged")
    with torch.no_grad():
        assert_close(reloaded(**again(images=images(), text=CAPTIONS)).logits, expected, atol=1e-5, rtol=1e-4)


def test_train_py_trains_a_joint_model_and_saves_it_merged(joint, tmp_path, repo_root):
    """The CLI end to end on a few demo rows: LoRA training through the Trainer (its checkpoints keep LoRA unmerged),
    evaluation with the modality ablation, and the final model saved merged and self-contained."""
    output = tmp_path / "out"
    command = [
        sys.executable, str(repo_root / "train.py"), "--vision_language_model_name_or_path", str(joint.base),
        "--output_dir", str(output), "--max_train_samples", "32", "--max_eval_samples", "16",
        "--num_train_epochs", "1", "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16",
        "--lora_r", "4", "--lora_alpha", "8", "--joint_head_size", "16", "--answer_loss_weight", "1",
        "--disable_tqdm", "true", "--dataloader_num_workers", "0", "--report_explained_errors", "0",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    config = json.loads((output / "config.json").read_text())
    assert config["fusion"] == "joint" and config["vision_language_weights"] == "full"
    assert config["lora_r"] == 4 and config["answer_loss_weight"] == 1.0 and len(config["answer_token_ids"]) == 2
    results = json.loads((output / "all_results.json").read_text())
    assert "eval_auroc" in results and "test_auroc" in results
    report = json.loads((output / "eval_report.json").read_text())
    assert "image_blanked" in json.dumps(report)  # the modality ablation ran through the joint collator
    model = MMFusionForClassification.from_pretrained(output)
    assert not any(LORA_MARKER in name for name, _ in model.named_parameters())


def test_the_app_classifies_with_a_joint_checkpoint(joint, saved, repo_root, tmp_path):
    import importlib.util

    from mmfusion.inference import MMFusionPredictor

    spec = importlib.util.spec_from_file_location("mmfusion_demo_app", repo_root / "app.py")
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)  # builds and launches nothing
    predictor = MMFusionPredictor.from_pretrained(saved["full"], device="cpu")
    image_path = tmp_path / "meme.png"
    images()[1].save(image_path)
    probabilities, table, verdict, decision = app.classify(predictor, str(image_path), CAPTIONS[1])
    with torch.no_grad():
        expected = joint.model(**joint.processor(images=images()[1], text=CAPTIONS[1])).logits.softmax(-1)[0]
    assert probabilities["hateful"] == pytest.approx(expected[1].item(), abs=1e-5)
    assert [row[0] for row in table] == ["image + caption", "image blanked", "caption emptied", "both removed"]
    assert "Decision" in decision and verdict
    assert app.explain(predictor, str(image_path), CAPTIONS[1])[2].startswith("Explanations are not available")
