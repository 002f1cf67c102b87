#!/usr/bin/env python
"""Throughput, peak memory and MFU of a joint mmfusion model (fusion="joint") at the real shapes of Qwen2-VL-2B/7B,
with random weights (nothing downloaded): LoRA training (RA-HMD stage 1's settings) and inference.

    python benchmarks/bench_vlm_gpu.py                               # Qwen2-VL-2B and -7B, batch 8, 768x768 images
    python benchmarks/bench_vlm_gpu.py --models 7b --batch 16 --no-gradient-checkpointing
    python benchmarks/bench_vlm_gpu.py --json benchmarks/results/vlm_gpu.json

One CUDA GPU, bf16 weights (the LoRA weights and the head in fp32, as train.py with --vision_language_dtype bfloat16
--bf16 trains them). Each example is one image of --image-side x --image-side pixels (768: RA-HMD's limit; Qwen2-VL
turns it into (768/14)^2 patches, merged 2x2 into language-model tokens) and RA-HMD's prompt. Without a GPU it stops
with a message; nothing here runs on CPU.

MFU: model FLOPs per second over the GPU's dense bf16 peak (--peak-tflops, else a table of known GPUs). Model FLOPs
count the matrix multiplications only: 2 x parameters x tokens for a forward pass of the language model (the vision
tower likewise per patch, plus attention's 4 x layers x tokens^2 x width); training adds 2x for the backward pass
through the frozen base (activation gradients; the LoRA weight gradients are negligible) and, with gradient
checkpointing, one more forward of the language model. The frozen vision tower runs forward only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

# Published shapes (config.json of Qwen/Qwen2-VL-2B-Instruct and Qwen/Qwen2-VL-7B-Instruct).
QWEN2_VL = {
    "2b": dict(
        text=dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                  num_key_value_heads=2, vocab_size=151936),
        vision_hidden_size=1536,
        tie_word_embeddings=True,
    ),
    "7b": dict(
        text=dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                  num_key_value_heads=4, vocab_size=152064),
        vision_hidden_size=3584,
        tie_word_embeddings=False,
    ),
}  # fmt: skip
VISION = dict(depth=32, embed_dim=1280, num_heads=16, mlp_ratio=4, patch_size=14, spatial_merge_size=2,
              temporal_patch_size=2)  # fmt: skip
# Dense bf16 peak TFLOP/s (no sparsity) by device-name fragment.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10G": 125.0, "A10": 125.0}
PROMPT_TOKENS = 40  # RA-HMD's prompt with a short caption and Qwen2-VL's chat markup, without the image's tokens
IMAGE_PAD, VISION_START, VISION_END = 151655, 151652, 151653


def qwen2_vl_config(size: str):
    from transformers import Qwen2VLConfig

    shapes = QWEN2_VL[size]
    text = dict(shapes["text"], max_position_embeddings=32768, rope_parameters={
        "rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1000000.0})  # fmt: skip
    return Qwen2VLConfig(
        text_config=text,
        vision_config=dict(VISION, hidden_size=shapes["vision_hidden_size"]),
        image_token_id=IMAGE_PAD,
        vision_start_token_id=VISION_START,
        vision_end_token_id=VISION_END,
        tie_word_embeddings=shapes["tie_word_embeddings"],
    )


def synthetic_batch(batch: int, image_side: int, device):
    """Qwen2-VL processor outputs for `batch` prompts of one image each, built without a tokenizer."""
    import torch

    grid = image_side // VISION["patch_size"]
    grid -= grid % VISION["spatial_merge_size"]
    patches = grid * grid
    image_tokens = patches // VISION["spatial_merge_size"] ** 2
    text = torch.randint(0, 150000, (batch, PROMPT_TOKENS), device=device)
    vision = torch.tensor([VISION_START] + [IMAGE_PAD] * image_tokens + [VISION_END], device=device)
    input_ids = torch.cat([text[:, :10], vision.expand(batch, -1), text[:, 10:]], dim=1)
    channels = 3 * VISION["temporal_patch_size"] * VISION["patch_size"] ** 2
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "mm_token_type_ids": (input_ids == IMAGE_PAD).long(),  # 1 on image tokens, as the processor marks them
        "pixel_values": torch.randn(batch * patches, channels, device=device, dtype=torch.bfloat16),
        "image_grid_thw": torch.tensor([[1, grid, grid]] * batch, device=device),
        "labels": torch.randint(0, 2, (batch,), device=device),
    }, patches


def model_flops(model, batch: dict, patches: int, training: bool, checkpointing: bool) -> float:
    vision_language = model.mmfusion.vision_language_model
    text = vision_language.config.get_text_config()
    tokens = batch["input_ids"].numel()
    per_example = batch["input_ids"].shape[1]
    language_params = sum(p.numel() for p in vision_language.model.language_model.parameters())
    language_params -= text.vocab_size * text.hidden_size  # the embedding is a lookup, not a matmul
    vision_params = sum(p.numel() for p in vision_language.model.visual.parameters())
    images = batch["image_grid_thw"].shape[0]
    attention = 4 * text.num_hidden_layers * per_example**2 * text.hidden_size * images
    vision_attention = 4 * VISION["depth"] * patches**2 * VISION["embed_dim"] * images
    language = 2 * language_params * tokens + attention
    vision = 2 * vision_params * patches * images + vision_attention
    if not training:
        return language + vision
    return language * (3 + (1 if checkpointing else 0)) + vision


def run(size: str, args, device="cuda") -> dict:
    import torch

    from mmfusion import MMFusionConfig, MMFusionForClassification
    from mmfusion.vision_language import add_lora

    device = torch.device(device)
    config = MMFusionConfig(
        fusion="joint",
        vision_language_config=qwen2_vl_config(size),
        num_labels=2,
        answer_token_ids=[2753, 9454],  # "No", "Yes" in Qwen2's vocabulary (any two ids do with random weights)
        answer_loss_weight=1.0,
        lora_r=args.lora_r,
        lora_alpha=2 * args.lora_r,
        freeze_vision_encoder=True,
    )
    config.vision_language_config._attn_implementation = args.attn_implementation
    torch.manual_seed(0)
    with torch.device(device):
        model = MMFusionForClassification(config)
    vision_language = model.mmfusion.vision_language_model.to(torch.bfloat16)
    vision_language.set_attn_implementation(args.attn_implementation)
    add_lora(vision_language, config)  # the LoRA weights stay fp32 (train.py: fp32 adapters, bf16 autocast)
    parameters = model.num_parameters()
    trainable = model.num_parameters(only_trainable=True)
    batch, patches = synthetic_batch(args.batch, args.image_side, device)
    results = {"model": f"Qwen2-VL-{size.upper()} shapes (random weights)", "parameters": parameters,
               "trainable": trainable, "batch": args.batch, "tokens_per_example": batch["input_ids"].shape[1],
               "image_side": args.image_side, "lora_r": args.lora_r}  # fmt: skip
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in torch.cuda.get_device_name()), None)

    def timed(step, steps):
        for _ in range(args.warmup):
            step()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
        return (time.perf_counter() - start) / steps, torch.cuda.max_memory_allocated() / 2**30

    # LoRA training: forward, backward, AdamW (fused) on the adapter and head
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=4e-5, fused=device.type == "cuda"
    )

    def train_step():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    seconds, memory = timed(train_step, args.steps)
    flops = model_flops(model, batch, patches, training=True, checkpointing=args.gradient_checkpointing)
    results["train"] = {"samples_per_s": args.batch / seconds, "step_s": seconds, "peak_memory_gib": memory,
                        "tflops": flops / seconds / 1e12, "gradient_checkpointing": args.gradient_checkpointing}  # fmt: skip
    # Inference: forward only
    model.gradient_checkpointing_disable()
    model.eval()
    optimizer.state.clear()  # the adapter's AdamW moments are not part of inference
    inputs = {k: v for k, v in batch.items() if k != "labels"}

    def infer_step():
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
            model(**inputs)

    seconds, memory = timed(infer_step, args.steps)
    flops = model_flops(model, batch, patches, training=False, checkpointing=False)
    results["inference"] = {"samples_per_s": args.batch / seconds, "step_s": seconds, "peak_memory_gib": memory,
                            "tflops": flops / seconds / 1e12}  # fmt: skip
    for mode in ("train", "inference"):
        results[mode]["mfu"] = results[mode]["tflops"] / peak if peak else None
    results["device"], results["peak_tflops"] = torch.cuda.get_device_name(), peak
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["2b", "7b"], choices=list(QWEN2_VL))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--image-side", type=int, default=768)
    parser.add_argument("--lora-r", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--no-gradient-checkpointing", dest="gradient_checkpointing", action="store_false")
    parser.add_argument("--attn-implementation", default="sdpa")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak, TFLOP/s")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print(
            "bench_vlm_gpu.py needs a CUDA GPU: it measures Qwen2-VL-2B/7B-sized joint models in bf16 (no CPU "
            "fallback; the CPU tests use tiny models instead).",
            file=sys.stderr,
        )
        return 2
    rows = []
    for size in args.models:
        result = run(size, args)
        torch.cuda.empty_cache()  # the model of the last size is gone with run()'s frame
        rows.append(result)
        for mode in ("train", "inference"):
            figures = result[mode]
            mfu = f"{100 * figures['mfu']:.1f} %" if figures["mfu"] is not None else "n/a (pass --peak-tflops)"
            print(
                f"{result['model']:<32} {mode:<9} batch {args.batch:>3}: {figures['samples_per_s']:8.2f} samples/s, "
                f"peak memory {figures['peak_memory_gib']:6.1f} GiB, {figures['tflops']:6.1f} TFLOP/s, MFU {mfu}",
                flush=True,
            )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(rows, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
