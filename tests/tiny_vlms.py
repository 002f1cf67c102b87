"""Tiny random vision-language models with working processors, saved like Hub checkpoints: built offline.

Sizes follow transformers' own model testers (tests/models/qwen2_vl, tests/models/idefics3): two layers, width 32.
The tokenizer is a byte-level BPE trained here on a few strings (the prompt, the answers, the chat markup), wrapped
as the model's tokenizer class with the special tokens its processor looks for; the chat template is the model's
own template string.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from mmfusion.fusions import DEFAULT_PROMPT_TEMPLATE

# Qwen2-VL-Instruct's chat template (tokenizer_config.json of Qwen/Qwen2-VL-2B-Instruct).
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QWEN2_VL_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# SmolVLM-Instruct's chat template.
SMOLVLM_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
SMOLVLM_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<end_of_utterance>",
    "<image>",
    "<fake_token_around_image>",
    "<global-img>",
]
TRAINING_STRINGS = [
    DEFAULT_PROMPT_TEMPLATE.format(caption="look how many people love you"),
    "system user assistant User: Assistant: You are a helpful assistant.",
    "Yes No",
    "a cat sits on the mat, the dog barks at the mailman, look at this sunset",
]
MROPE = {8: [2, 1, 1], 16: [4, 2, 2], 32: [8, 4, 4]}  # head_dim -> Qwen2-VL's mrope_section
# The tiny vision towers see at most 56x56 pixels: 4x4 patches of 14 px.
MAX_PIXELS = 56 * 56


def byte_level_bpe(special_tokens: list[str], vocab_size: int = 320, extra_strings=()) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special_tokens, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator((TRAINING_STRINGS + list(extra_strings)) * 3, trainer)
    return tokenizer


def tiny_qwen2_vl_checkpoint(folder, seed: int = 0, extra_strings=(), vocab_size: int = 320, hidden_size: int = 32):
    """A random Qwen2VLForConditionalGeneration (2 text and 2 vision layers, width 32) and its Qwen2VLProcessor
    (Qwen2-VL's chat template, images of at most 56x56 pixels) saved in `folder`; returns the model."""
    import torch
    from transformers import (
        AutoModelForImageTextToText,
        Qwen2TokenizerFast,
        Qwen2VLConfig,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    tokenizer = Qwen2TokenizerFast(
        tokenizer_object=byte_level_bpe(QWEN2_VL_SPECIAL_TOKENS, vocab_size=vocab_size, extra_strings=extra_strings),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
    )
    pixels = dict(min_pixels=28 * 28, max_pixels=MAX_PIXELS, patch_size=14, merge_size=2, temporal_patch_size=2)
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixels),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(**pixels),
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
    )
    token = tokenizer.convert_tokens_to_ids
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            intermediate_size=37 * hidden_size // 32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            # mrope sections (temporal, height, width) split head_dim / 2 rotary frequencies
            rope_parameters={"rope_type": "default", "mrope_section": MROPE[hidden_size // 4], "rope_theta": 10000.0},
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=None,
            eos_token_id=tokenizer.eos_token_id,
        ),
        vision_config=dict(
            depth=2,
            embed_dim=32,
            hidden_size=hidden_size,  # the merger's output: the language model's width
            num_heads=4,
            mlp_ratio=4,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
        ),
        image_token_id=token("<|image_pad|>"),
        video_token_id=token("<|video_pad|>"),
        vision_start_token_id=token("<|vision_start|>"),
        vision_end_token_id=token("<|vision_end|>"),
    )
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config).eval()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model


IDEFICS3_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<end_of_utterance>",
    "<image>",
    "<fake_token_around_image>",
    "<global-img>",
]


def tiny_idefics3_checkpoint(folder, seed: int = 0):
    """A random Idefics3ForConditionalGeneration (SmolVLM's architecture: a SigLIP-like vision tower, pixel shuffle,
    a Llama language model; 2 layers of width 32 each) and its Idefics3Processor (SmolVLM's chat template, 32-px
    images without splitting: 4 image tokens) saved in `folder`; returns the model."""
    import torch
    from transformers import (
        AutoModelForImageTextToText,
        Idefics3Config,
        Idefics3ImageProcessor,
        Idefics3Processor,
        PreTrainedTokenizerFast,
    )

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=byte_level_bpe(IDEFICS3_SPECIAL_TOKENS),
        bos_token="<|im_start|>",
        eos_token="<end_of_utterance>",
        pad_token="<|endoftext|>",
        unk_token=None,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": IDEFICS3_SPECIAL_TOKENS[2:]})
    image_processor = Idefics3ImageProcessor(
        do_image_splitting=False, size={"longest_edge": 32}, max_image_size={"longest_edge": 32}
    )
    processor = Idefics3Processor(
        image_processor=image_processor, tokenizer=tokenizer, image_seq_len=4, chat_template=SMOLVLM_CHAT_TEMPLATE
    )
    config = Idefics3Config(
        text_config=dict(
            model_type="llama",
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
        ),
        scale_factor=2,  # (32 / 8)^2 patches / 2^2 = 4 image tokens
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
    )
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config).eval()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model


# LLaVA-1.5's conversation layout ("USER: <image>\n... ASSISTANT:") as a chat template.
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'].upper() }}: {% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}<image>\n{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}"
    " {% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def tiny_llava_checkpoint(folder, seed: int = 0):
    """A random LlavaForConditionalGeneration (a 2-layer CLIP vision tower over 8-px patches of 32-px images, the
    projector, a 2-layer Llama; width 32) and its LlavaProcessor (CLIP's image processor, fixed 32-px input; 17
    image tokens) saved in `folder`; returns the model."""
    import torch
    from transformers import (
        AutoModelForImageTextToText,
        CLIPImageProcessor,
        LlavaConfig,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=byte_level_bpe(["<unk>", "<s>", "</s>", "<image>", "<pad>"]),
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        chat_template=LLAVA_CHAT_TEMPLATE,
        image_token="<image>",
        num_additional_image_tokens=1,  # CLIP's class token
    )
    config = LlavaConfig(
        vision_config=dict(
            model_type="clip_vision_model",
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
        ),
        text_config=dict(
            model_type="llama",
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            pad_token_id=tokenizer.pad_token_id,
        ),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config).eval()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model


if __name__ == "__main__":  # python tests/tiny_vlms.py FOLDER: the tiny Qwen2-VL that train.py's joint demo runs on
    import sys

    from mmfusion.data.demo import COLD_WORDS, FILLER_WORDS, WARM_WORDS

    if len(sys.argv) != 2:
        raise SystemExit("usage: python tests/tiny_vlms.py FOLDER")
    # the demo's words in the vocabulary, so that each caption keyword is one token; 64 wide
    words = " ".join(WARM_WORDS + COLD_WORDS + FILLER_WORDS)
    tiny_qwen2_vl_checkpoint(sys.argv[1], extra_strings=[words] * 5, vocab_size=600, hidden_size=64)
    print(f"Saved a tiny random Qwen2-VL with its processor to {sys.argv[1]}")
