import pytest
import torch
from tiny_models import IMAGE_SIZE, tiny_config, tiny_model
from torch.testing import assert_close
from transformers.modeling_outputs import BaseModelOutputWithPooling

from mmfusion import MMFusionForClassification
from mmfusion.fusions import fusion_names

FUSIONS = fusion_names(needs_text=True, needs_image=True, joint_encoder=False)  # the two-tower fusions


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
        features = model.get_image_features(inputs["pixel_values"]).last_hidden_state
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
    features = model.get_image_features(torch.zeros(1, 3, 64, 64)).last_hidden_state
    assert features.shape[-2:] == (4, 4)


# Regression tests for issue 15: the conventions transformers' composite models follow. They hold where the common
# suite (tests/test_conformance.py) is skipped.


def model_inputs(**overrides):
    return {key: value for key, value in batch(**overrides).items() if key != "labels"}


def eager_model(fusion, tmp_path, **overrides):
    tiny_model(fusion, **overrides).save_pretrained(tmp_path)
    return MMFusionForClassification.from_pretrained(tmp_path, attn_implementation="eager").eval()


@pytest.mark.parametrize("fusion", FUSIONS)
def test_output_flags_and_return_dict_are_read_from_the_config(fusion, tmp_path):
    model = eager_model(fusion, tmp_path)
    inputs = model_inputs()
    with torch.no_grad():
        plain = model(**inputs)
        assert plain.hidden_states is None and plain.attentions is None
        model.config.output_hidden_states = True
        model.config.output_attentions = True
        flagged = model(**inputs)
        model.config.return_dict = False
        as_tuple = model(**inputs)
    assert len(flagged.hidden_states) == 1 + 2 and len(flagged.attentions) == 2
    assert isinstance(as_tuple, tuple)
    assert_close(as_tuple[0], plain.logits)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_the_text_sub_configs_output_flag_is_honoured(fusion):
    model = tiny_model(fusion).eval()
    model.config.text_config.output_hidden_states = True
    with torch.no_grad():
        outputs = model(**model_inputs())
    assert len(outputs.hidden_states) == 1 + 2


@pytest.mark.parametrize("fusion", FUSIONS)
def test_output_hidden_states_can_select_layers(fusion):
    model = tiny_model(fusion).eval()
    inputs = model_inputs()
    with torch.no_grad():
        every = model(**inputs, output_hidden_states=True).hidden_states
        chosen = model(**inputs, output_hidden_states=[0, -1]).hidden_states
    assert len(chosen) == len(every) == 3
    assert chosen[1] is None
    assert_close(chosen[0], every[0])
    assert_close(chosen[2], every[2])


@pytest.mark.parametrize("fusion", FUSIONS)
def test_token_embeddings_can_be_resized_after_adding_tokens(fusion):
    model = tiny_model(fusion).eval()
    assert model.get_input_embeddings() is model.mmfusion.text_model.embeddings.word_embeddings
    model.resize_token_embeddings(130)
    assert model.get_input_embeddings().num_embeddings == 130
    assert model.config.text_config.vocab_size == 130
    inputs = model_inputs()
    inputs["input_ids"][:, 1] = 129  # a token that did not exist before
    with torch.no_grad():
        assert torch.isfinite(model(**inputs).logits).all()


@pytest.mark.parametrize("fusion", FUSIONS)
def test_enable_input_require_grads_makes_frozen_embeddings_carry_gradients(fusion):
    model = tiny_model(fusion).train()
    model.requires_grad_(False)
    model.enable_input_require_grads()
    assert model(**model_inputs()).logits.requires_grad


@pytest.mark.parametrize("fusion", FUSIONS)
def test_inputs_embeds_give_the_same_logits_as_input_ids(fusion):
    model = tiny_model(fusion).eval()
    inputs = model_inputs()
    with torch.no_grad():
        from_ids = model(**inputs).logits
        embeds = model.get_input_embeddings()(inputs.pop("input_ids"))
        from_embeds = model(**inputs, inputs_embeds=embeds).logits
    assert_close(from_embeds, from_ids)


def test_get_image_features_returns_the_standard_output():
    model = tiny_model("early").eval()
    pixel_values = batch()["pixel_values"]
    with torch.no_grad():
        outputs = model.get_image_features(pixel_values)
        with_states = model.get_image_features(pixel_values, output_hidden_states=True)
        as_tuple = model.get_image_features(pixel_values, return_dict=False)
    assert isinstance(outputs, BaseModelOutputWithPooling)
    assert outputs.last_hidden_state.shape == (4, 32, 2, 2)  # the tower's feature map, what image_features= takes
    assert_close(outputs.pooler_output, outputs.last_hidden_state.mean(dim=(-2, -1)))
    assert len(with_states.hidden_states) == 1 + 3  # stem, then one per stage
    assert isinstance(as_tuple, tuple)
    assert_close(as_tuple[0], outputs.last_hidden_state)


def test_a_model_output_is_refused_as_image_features():
    model = tiny_model("early").eval()
    inputs = model_inputs()
    features = model.get_image_features(inputs.pop("pixel_values"))
    with pytest.raises(TypeError, match=r"get_image_features\(pixel_values\).last_hidden_state"):
        model(**inputs, image_features=features)


def test_attention_fusion_keeps_its_weights_apart_from_the_towers(tmp_path):
    model = eager_model("attention", tmp_path)
    inputs = model_inputs()
    with torch.no_grad():
        outputs = model(**inputs, output_attentions=True)
    seq_len, joint_len = inputs["input_ids"].shape[1], inputs["input_ids"].shape[1] + 4
    assert len(outputs.attentions) == 2  # one per text layer, nothing else
    assert all(weights.shape == (4, 4, seq_len, seq_len) for weights in outputs.attentions)
    assert outputs.fusion_attentions.shape == (4, 2, joint_len, joint_len)  # (batch, fusion heads, joint, joint)
    assert_close(outputs.fusion_attentions.sum(-1), torch.ones(4, 2, joint_len))
    assert torch.all(outputs.fusion_attentions[0, :, :, 6:seq_len] == 0)  # padded caption positions
    assert model(**inputs).fusion_attentions is None


@pytest.mark.parametrize("fusion", FUSIONS)
def test_a_text_config_asking_for_tuples_does_not_break_the_model(fusion):
    model = tiny_model(fusion).eval()
    inputs = model_inputs()
    with torch.no_grad():
        reference = model(**inputs).logits
        model.config.text_config.return_dict = False
        model.config.vision_config.return_dict = False
        assert_close(model(**inputs).logits, reference)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_set_attn_implementation_switches_the_whole_model(fusion):
    model = tiny_model(fusion).eval()
    inputs = model_inputs()
    with torch.no_grad():
        sdpa = model(**inputs).logits
        model.set_attn_implementation("eager")
        eager = model(**inputs).logits
    assert model.config._attn_implementation == "eager"
    assert model.mmfusion.text_model.config._attn_implementation == "eager"
    assert_close(eager, sdpa, atol=1e-5, rtol=1e-4)


def test_align_defaults_are_rgcls_head_and_a_saved_config_keeps_its_own(tmp_path):
    """align defaults to RGCL's 1024-dim maps; a checkpoint saved with Hate-CLIPper's 32-dim map (the old default)
    reloads with it, weights and all."""
    fresh = tiny_config("align")
    assert (fresh.fusion_map_dim, fresh.fusion_num_pre_output_layers) == (1024, 1)
    assert (fresh.fusion_map_dropout, fresh.fusion_pre_output_dropout) == (0.2, 0.4)
    assert tiny_config("cross").fusion_map_dim == 32  # cross keeps Hate-CLIPper's
    model = tiny_model("align", fusion_map_dim=32, fusion_num_pre_output_layers=2, fusion_map_dropout=0.1).eval()
    model.save_pretrained(tmp_path)
    reloaded = MMFusionForClassification.from_pretrained(tmp_path).eval()
    assert (reloaded.config.fusion_map_dim, reloaded.config.fusion_num_pre_output_layers) == (32, 2)
    inputs = batch()
    with torch.no_grad():
        assert_close(reloaded(**inputs).logits, model(**inputs).logits)
