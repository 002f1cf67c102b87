import pytest
import torch
from tiny_models import IMAGE_SIZE, tiny_config, tiny_model
from torch.testing import assert_close

from mmfusion import MMFusionForClassification

FUSIONS = ["early", "concat", "attention"]


def batch(batch_size=4, seq_len=9, num_labels=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, 120, (batch_size, seq_len), generator=generator)
    input_ids[:, 0] = 2  # [CLS]
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, 6:] = 0  # one padded caption
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "pixel_values": torch.randn(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator),
        "labels": torch.arange(batch_size) % num_labels,
    }


@pytest.mark.parametrize("freeze_vision_encoder", [False, True])
@pytest.mark.parametrize("fusion", FUSIONS)
def test_forward_backward_gives_loss_logits_and_gradients(fusion, freeze_vision_encoder):
    model = tiny_model(fusion, freeze_vision_encoder=freeze_vision_encoder).train()
    outputs = model(**batch())
    assert outputs.logits.shape == (4, 2)
    assert outputs.loss.ndim == 0 and torch.isfinite(outputs.loss)
    outputs.loss.backward()
    # Every trainable parameter takes part in the loss: what lets DDP skip its search for unused parameters
    # (`ddp_find_unused_parameters: False` in our training defaults).
    missing = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"


@pytest.mark.parametrize("fusion", FUSIONS)
def test_overfits_a_fixed_batch(fusion):
    torch.manual_seed(0)
    model = tiny_model(fusion).train()
    inputs = batch(batch_size=8, seed=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = model(**inputs).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0], losses
    model.eval()
    predictions = model(**inputs).logits.argmax(-1)
    assert torch.equal(predictions, inputs["labels"])


@pytest.mark.parametrize("fusion", FUSIONS)
def test_save_and_reload_gives_identical_logits(fusion, tmp_path):
    model = tiny_model(fusion, num_labels=3).eval()
    inputs = batch(num_labels=3)
    model.save_pretrained(tmp_path)
    reloaded = MMFusionForClassification.from_pretrained(tmp_path).eval()
    assert (tmp_path / "model.safetensors").exists()
    with torch.no_grad():
        assert_close(reloaded(**inputs).logits, model(**inputs).logits)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_frozen_towers_get_no_gradients_and_keep_batchnorm_statistics(fusion):
    model = tiny_model(fusion, freeze_text_encoder=True, freeze_vision_encoder=True).train()
    towers = model.mmfusion
    running_mean = towers.vision_model.embedder.embedder.normalization.running_mean.clone()
    model(**batch()).loss.backward()
    for tower in (towers.text_model, towers.vision_model):
        assert not tower.training
        assert all(not p.requires_grad and p.grad is None for p in tower.parameters())
    assert torch.equal(towers.vision_model.embedder.embedder.normalization.running_mean, running_mean)
    assert model.classifier.weight.grad is not None


@pytest.mark.parametrize("fusion", FUSIONS)
def test_precomputed_image_features_match_pixel_values(fusion):
    model = tiny_model(fusion).eval()
    inputs = batch()
    with torch.no_grad():
        features = model.get_image_features(inputs["pixel_values"])
        from_pixels = model(**inputs).logits
        inputs["image_features"] = features
        del inputs["pixel_values"]
        from_features = model(**inputs).logits
    assert features.shape == (4, 32, 2, 2)
    assert_close(from_features, from_pixels)


def test_exactly_one_image_input_is_required():
    model = tiny_model()
    inputs = batch()
    with pytest.raises(ValueError, match="exactly one of `pixel_values` and `image_features`"):
        model(**{k: v for k, v in inputs.items() if k != "pixel_values"})


@pytest.mark.parametrize("fusion", FUSIONS)
def test_sdpa_and_eager_attention_agree(fusion, tmp_path):
    tiny_model(fusion).save_pretrained(tmp_path)
    inputs = batch()
    logits = {}
    for implementation in ("sdpa", "eager"):
        model = MMFusionForClassification.from_pretrained(tmp_path, attn_implementation=implementation).eval()
        assert model.mmfusion.text_model.config._attn_implementation == implementation
        with torch.no_grad():
            logits[implementation] = model(**inputs).logits
    assert_close(logits["sdpa"], logits["eager"], atol=1e-5, rtol=1e-4)


def test_early_fusion_reads_cls_and_sees_the_image():
    model = tiny_model("early").eval()
    inputs = batch()
    with torch.no_grad():
        outputs = model.mmfusion(
            **{k: v for k, v in inputs.items() if k != "labels"}, output_hidden_states=True, output_attentions=True
        )
        other_image = dict(inputs, pixel_values=torch.randn_like(inputs["pixel_values"]))
        changed = model(**other_image).logits
    seq_len, image_tokens = inputs["input_ids"].shape[1], 4
    assert outputs.last_hidden_state.shape == (4, seq_len + image_tokens, 32)
    assert len(outputs.hidden_states) == 1 + 2  # embeddings + one per layer
    assert not torch.allclose(changed, model(**inputs).logits)


def test_attentions_are_returned_with_eager_attention(tmp_path):
    tiny_model("early").save_pretrained(tmp_path)
    model = MMFusionForClassification.from_pretrained(tmp_path, attn_implementation="eager").eval()
    inputs = batch()
    outputs = model(**inputs, output_attentions=True)
    assert len(outputs.attentions) == 2
    total = inputs["input_ids"].shape[1] + 4
    assert outputs.attentions[0].shape == (4, 4, total, total)
    # padded caption positions get no attention
    assert torch.all(outputs.attentions[0][0, :, :, 6:9] == 0)


def test_padding_does_not_change_the_prediction():
    model = tiny_model("early").eval()
    inputs = batch(batch_size=1)
    padded = {k: v for k, v in inputs.items() if k != "labels"}
    padded["input_ids"] = torch.cat([inputs["input_ids"], torch.zeros(1, 5, dtype=torch.long)], dim=1)
    padded["attention_mask"] = torch.cat([inputs["attention_mask"], torch.zeros(1, 5, dtype=torch.long)], dim=1)
    with torch.no_grad():
        assert_close(
            model(**padded).logits,
            model(**{k: v for k, v in inputs.items() if k != "labels"}).logits,
            atol=1e-5,
            rtol=1e-4,
        )


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = tiny_model("early").train()
    inputs = batch()
    model(**inputs).loss.backward()
    reference = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.gradient_checkpointing_enable()
    assert model.is_gradient_checkpointing
    model(**inputs).loss.backward()
    for name, grad in reference.items():
        assert_close(dict(model.named_parameters())[name].grad, grad, atol=1e-6, rtol=1e-5)


def test_multiclass_loss_is_cross_entropy():
    model = tiny_model("concat", num_labels=3).eval()
    inputs = batch(num_labels=3)
    outputs = model(**inputs)
    expected = torch.nn.functional.cross_entropy(outputs.logits, inputs["labels"])
    assert_close(outputs.loss, expected)
    assert model.config.problem_type == "single_label_classification"


def test_modality_dropout_only_acts_in_training():
    torch.manual_seed(0)
    model = tiny_model("early", modality_dropout=0.9)
    inputs = {k: v for k, v in batch().items() if k != "labels"}
    model.eval()
    with torch.no_grad():
        first, second = model(**inputs).logits, model(**inputs).logits
    assert_close(first, second)
    model.train()
    with torch.no_grad():
        trained = [model(**inputs).logits for _ in range(3)]
    assert not all(torch.allclose(trained[0], other) for other in trained[1:])


def test_tiny_config_grid_matches_the_tower():
    # the config's grid arithmetic agrees with what the tower really produces
    config = tiny_config(image_size=64, num_image_tokens=16)
    model = MMFusionForClassification(config)
    features = model.get_image_features(torch.zeros(1, 3, 64, 64))
    assert features.shape[-2:] == (4, 4)
