#!/usr/bin/env python
"""Throughput, peak memory and MFU of mmfusion's two-tower models at real sizes, with random weights (nothing
downloaded): BERT-base + ResNet-50 joined by early fusion (the seed tutorial's model at full size) and CLIP
ViT-L/14 with cross fusion (Hate-CLIPper's setting).

    python benchmarks/bench_gpu.py                              # on a CUDA GPU: both models, bf16, batch 128
    python benchmarks/bench_gpu.py --models clip-vit-l14 --batch 256 --json benchmarks/results/gpu.json
    python benchmarks/bench_gpu.py --device cpu --tiny          # the same code on CPU with tiny shapes (a smoke run)

For each model, on synthetic inputs (32 caption tokens, 224-px images):

- `train`: one optimizer step as train.py runs it by default, the frozen towers' outputs cached (early fusion: the
  ResNet-50 feature grid, BERT trained; cross fusion: both CLIP embeddings, the fusion head trained): forward,
  backward and fused AdamW under bf16 autocast;
- `train, towers every step`: the same with the frozen towers run on every step (`--cache_image_features false`);
- `inference`: the whole model from token ids and pixels.

Model FLOPs are counted by torch's `FlopCounterMode` on one call of each (matrix multiplications, convolutions and
attention, forward and backward, as they run); MFU is their rate over the GPU's dense bf16 peak (`--peak-tflops`, else
the table of known GPUs in bench_vlm_gpu.py). Peak memory is `torch.cuda.max_memory_allocated` over the timed steps.
`bench_vlm_gpu.py` does the same for the joint vision-language models.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_vlm_gpu import PEAK_TFLOPS

CAPTION_TOKENS = 32
IMAGE_SIZE = 224


def bert_resnet50_early(tiny: bool):
    from transformers import BertConfig, ResNetConfig

    from mmfusion import MMFusionConfig, MMFusionForClassification
    from mmfusion.training.presets import small_text_config, small_vision_config

    if tiny:
        text, vision = small_text_config(1000), small_vision_config()
    else:  # transformers' defaults are bert-base-uncased's and ResNet-50's shapes
        text, vision = BertConfig(), ResNetConfig()
    config = MMFusionConfig(
        text_config=text,
        vision_config=vision,
        fusion="early",
        num_image_tokens=49,
        image_size=IMAGE_SIZE,
        freeze_vision_encoder=True,
        num_labels=2,
    )
    config._attn_implementation = "sdpa"
    return MMFusionForClassification(config)


def clip_vit_l14_cross(tiny: bool, folder: Path):
    from transformers import CLIPConfig, CLIPModel

    from mmfusion import MMFusionForClassification

    if tiny:
        text = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2)
        vision = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2, patch_size=32)
        projection = 64
    else:  # openai/clip-vit-large-patch14's config.json
        text = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
        vision = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                      patch_size=14)  # fmt: skip
        projection = 768
    config = CLIPConfig(
        text_config=dict(max_position_embeddings=77, vocab_size=49408, **text),
        vision_config=dict(image_size=IMAGE_SIZE, **vision),
        projection_dim=projection,
    )
    CLIPModel(config).save_pretrained(folder)  # the towers come from a checkpoint, as from the Hub
    return MMFusionForClassification.from_text_vision_pretrained(
        str(folder), str(folder), fusion="cross", freeze_text_encoder=True, freeze_vision_encoder=True, num_labels=2
    )


MODELS = {"bert-resnet50": bert_resnet50_early, "clip-vit-l14": clip_vit_l14_cross}


def synthetic_inputs(model, batch: int, device) -> dict:
    vocab = model.config.text_config.vocab_size
    generator = torch.Generator().manual_seed(0)
    return {
        "input_ids": torch.randint(3, vocab, (batch, CAPTION_TOKENS), generator=generator).to(device),
        "attention_mask": torch.ones(batch, CAPTION_TOKENS, dtype=torch.long, device=device),
        "pixel_values": torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator).to(device),
        "labels": torch.randint(0, 2, (batch,), generator=generator).to(device),
    }


def cached_inputs(model, inputs: dict, dtype) -> dict:
    """What train.py's cache holds for this model's fusion, in place of the frozen towers' inputs."""
    with torch.no_grad(), torch.autocast(inputs["pixel_values"].device.type, dtype=dtype):
        if model.config.fusion == "early":
            features = model.get_image_features(inputs["pixel_values"]).last_hidden_state
            return {**{k: v for k, v in inputs.items() if k != "pixel_values"}, "image_features": features}
        return {
            "text_embeds": model.text_embeddings(inputs["input_ids"], inputs["attention_mask"]),
            "image_embeds": model.image_embeddings(inputs["pixel_values"]),
            "labels": inputs["labels"],
        }


def measure(step, steps: int, warmup: int, device) -> tuple[float, float | None, float]:
    """Seconds per step (median-free mean over `steps` after `warmup`), peak GiB, and FLOPs of one step."""
    from torch.utils.flop_counter import FlopCounterMode

    for _ in range(warmup):
        step()
    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    return seconds, (torch.cuda.max_memory_allocated() / 2**30 if cuda else None), flops


def run(name: str, args, device) -> list[dict]:
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    with tempfile.TemporaryDirectory() as folder:
        torch.manual_seed(0)
        builder = MODELS[name]
        model = builder(args.tiny, Path(folder)) if name == "clip-vit-l14" else builder(args.tiny)
    model.to(device)
    inputs = synthetic_inputs(model, args.batch, device)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=device.type == "cuda"
    )

    def train_step(batch):
        def step():
            with torch.autocast(device.type, dtype=dtype, enabled=args.precision == "bf16"):
                loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step

    def infer_step():
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=args.precision == "bf16"):
            model(**{k: v for k, v in inputs.items() if k != "labels"})

    peak = args.peak_tflops
    if peak is None and device.type == "cuda":
        peak = next((v for k, v in PEAK_TFLOPS.items() if k in torch.cuda.get_device_name()), None)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    rows = []
    model.train()
    for mode, step in (
        ("train", train_step(cached_inputs(model.eval(), inputs, dtype))),
        ("train, towers every step", train_step(inputs)),
        ("inference", infer_step),
    ):
        model.train(mode != "inference")
        seconds, memory, flops = measure(step, args.steps, args.warmup, device)
        tflops = flops / seconds / 1e12
        rows.append({"model": name, "mode": mode, "batch": args.batch, "samples_per_s": args.batch / seconds,
                     "step_s": seconds, "peak_memory_gib": memory, "tflops": tflops,
                     "mfu": tflops / peak if peak else None, "parameters": model.num_parameters(),
                     "trainable": trainable})  # fmt: skip
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (with --tiny: a smoke run)")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes, to check the script runs")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's dense peak, TFLOP/s")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(
            "bench_gpu.py measures on a CUDA GPU and this machine has none (try --device cpu --tiny).", file=sys.stderr
        )
        return 2
    from mmfusion.training.precision import describe_cpu

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else describe_cpu()
    print(f"{where}; torch {torch.__version__}; {args.precision}; {'tiny shapes' if args.tiny else 'real shapes'}")
    rows = []
    for name in args.models:
        for row in run(name, args, device):
            rows.append(row)
            memory = f"{row['peak_memory_gib']:6.1f} GiB" if row["peak_memory_gib"] is not None else "n/a"
            mfu = f"{100 * row['mfu']:.1f} %" if row["mfu"] is not None else "n/a"
            print(
                f"{name:<14} {row['mode']:<25} batch {row['batch']:>4}: {row['samples_per_s']:9.1f} samples/s, "
                f"peak memory {memory}, {row['tflops']:7.2f} TFLOP/s, MFU {mfu}",
                flush=True,
            )
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if args.json:
        Path(args.json).write_text(json.dumps({"device": where, "rows": rows}, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
