"""Command-line arguments of `train.py`: model, data and the Trainer's own `TrainingArguments`.

Defaults make `python train.py` the demo run: early fusion with small randomly initialised towers on the embedded
demo dataset, on CPU. Training defaults follow the notebook's Part 2 (AdamW, cosine schedule with warmup, evaluate
and save every epoch, keep the best model by AUROC / macro-F1).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, make_dataclass
from pathlib import Path

import torch
import yaml
from transformers import HfArgumentParser, TrainingArguments

from ..configuration_mmfusion import OBJECTIVE_SETTINGS, TEXT_POOLINGS
from ..data.options import LoaderArguments
from ..fusions import FUSIONS, fusion_names, fusion_settings
from ..inference.sharding import warn_if_started_alone
from .precision import PRECISIONS, resolve_precision


@dataclass
class ModelArguments:
    """The model's arguments that are not a fusion's own settings; `model_arguments_class()` adds those (and the
    `--fusion` choices) from the fusion registry, so a fusion's setting is declared once, on the fusion."""

    fusion: str = field(default="early", metadata={"help": "How the towers are joined (a name in FUSIONS)."})
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "An mmfusion checkpoint (folder or Hub id) to fine-tune or evaluate."}
    )
    text_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Pretrained text tower (e.g. bert-base-uncased). Unset: a small random BERT."},
    )
    vision_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Pretrained vision tower (e.g. microsoft/resnet-50, or torchvision/resnet18). "
            "Unset: a small random ResNet."
        },
    )
    torchvision_weights: str | None = field(
        default=None, metadata={"help": "A torchvision state-dict file for a torchvision/<arch> tower."}
    )
    freeze_text_encoder: bool = False
    freeze_vision_encoder: bool = field(
        default=True,
        metadata={"help": "Freeze the vision tower (the notebook's early-fusion setting); enables feature caching."},
    )
    image_size: int | None = field(
        default=None, metadata={"help": "Square image side. Default: 224 with a pretrained tower, 64 otherwise."}
    )
    num_image_tokens: int | None = field(
        default=None, metadata={"help": "Image tokens for early/attention fusion. Default: the grid, at most 49."}
    )
    text_pooling: str | None = field(
        default=None,
        metadata={
            "help": "pooler | cls | mean: how the caption becomes one vector (for "
            + ", ".join(fusion_names(uses_text_pooler=True))
            + "). Default: a sentence-transformers tower's own pooling, else pooler.",
            "choices": list(TEXT_POOLINGS),
        },
    )
    image_gate: bool | None = field(
        default=None,
        metadata={
            "help": "/".join(name for name, fusion in FUSIONS.items() if "image_gate" in fusion.settings)
            + ": let the image in through a learned gate that starts (nearly) closed, so "
            "training starts from the pretrained text tower's behaviour (see MMFusionConfig.image_gate). Default: on "
            "with --text_model_name_or_path, off for the small random towers (nothing to preserve)."
        },
    )
    fusion_learning_rate: float | None = field(
        default=None,
        metadata={"help": "Learning rate of the fresh layers (fusion, classifier). Default: --learning_rate."},
    )
    unimodal_baselines: bool = field(
        default=False,
        metadata={
            "help": "Also train text-only and image-only models with the same recipe (into <output_dir>/baselines/) "
            "and show them beside the fused model in the report and model card."
        },
    )
    calibrate: bool = field(
        default=True,
        metadata={
            "help": "After training, fit a temperature on the validation split (temperature scaling) so the scores "
            "mean what they say; stored in the config and applied by every inference path. It never changes a "
            "predicted label."
        },
    )
    decision_threshold: str | None = field(
        default=None,
        metadata={
            "help": "The operating point: a number in [0, 1] (class 1 is predicted when its probability reaches it) "
            "or a policy chosen on the validation split: max_f1, precision=0.9, recall=0.9, fpr=0.01 (one vs rest "
            "per class for more than two classes). Stored in the config with the figures it met; every inference "
            "path uses it. Default: argmax."
        },
    )
    classifier_dropout: float = 0.1
    modality_dropout: float = field(
        default=0.0, metadata={"help": "Probability of dropping one modality per training example (off by default)."}
    )
    attn_implementation: str = field(default="sdpa", metadata={"help": "sdpa | eager | flash_attention_2"})
    small_text_hidden_size: int = field(default=128, metadata={"help": "Width of the small random text tower."})
    small_text_layers: int = field(default=2, metadata={"help": "Layers of the small random text tower."})
    small_vision_width: int = field(default=16, metadata={"help": "Stem width of the small random ResNet."})
    small_vision_stages: int = field(default=3, metadata={"help": "Stages of the small random ResNet."})
    tokenizer_vocab_size: int = field(
        default=1000, metadata={"help": "Vocabulary of the tokenizer trained on the captions (small text tower)."}
    )
    dual_encoder_projections: bool = field(
        default=True,
        metadata={
            "help": "With one dual encoder (CLIP) for both towers, read its embeddings through its projections into "
            "the joint space (text_projection/visual_projection); false: the towers' pooler outputs, as RGCL does."
        },
    )
    # The labelled memory (issue 21, mmfusion/memory.py): built from the training split after training.
    build_memory: bool = field(
        default=True,
        metadata={
            "help": "After training, embed the training split into the checkpoint's labelled memory "
            "(memory.safetensors: one forward pass, no gradients; 4 bytes x embedding width per row) for kNN "
            "predictions, neighbours as explanations and updates without retraining (mmfusion-memory)."
        },
    )
    prediction_mode: str | None = field(
        default=None,
        metadata={
            "help": "head, knn or mix (see mmfusion/memory.py). Default: chosen on the validation split by the "
            "selection metric (head unless kNN or a mix scores higher), recorded in the config.",
            "choices": ["head", "knn", "mix"],
        },
    )
    knn_k: int = field(default=20, metadata={"help": "Neighbours the kNN score reads (RGCL: 20)."})
    # fusion="joint": one vision-language model as the only tower (its settings: the joint fusion's, below).
    vision_language_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "An image-text-to-text model (Qwen/Qwen2-VL-2B-Instruct, HuggingFaceTB/SmolVLM-256M-Instruct, a "
            "local folder) as the only tower: fusion=joint, with its own processor and chat template. LoRA, prompt, "
            "pooling and pixel limit: --lora_r, --lora_alpha, --lora_dropout, --lora_target_modules, "
            "--prompt_template, --joint_pooling, --vision_language_max_pixels, --answer_loss_weight."
        },
    )
    vision_language_dtype: str | None = field(
        default=None,
        metadata={
            "help": "dtype the vision-language model is loaded in (bfloat16, float16, float32; default float32). "
            "With LoRA, bfloat16 halves its memory; the head stays float32.",
            "choices": ["bfloat16", "float16", "float32"],
        },
    )
    vision_language_load_in_4bit: bool = field(
        default=False,
        metadata={"help": "QLoRA: load the vision-language model in 4 bits (bitsandbytes, CUDA GPU only)."},
    )
    vision_language_save: str = field(
        default="auto",
        metadata={
            "help": "How the trained joint model is saved: full (LoRA merged, self-contained, loads with transformers "
            "alone), adapter (the LoRA weights and the head, with the base model's id), auto (full up to 1B "
            "parameters, else adapter).",
            "choices": ["auto", "full", "adapter"],
        },
    )


def model_arguments_class() -> type[ModelArguments]:
    """`ModelArguments` with `--fusion`'s choices and one flag per fusion setting, read from the fusion registry now
    (so a fusion registered after import, e.g. in a user's module, gets its flags too)."""
    fields = [
        (
            "fusion",
            str,
            field(default="early", metadata={"help": "How the towers are joined.", "choices": list(FUSIONS)}),
        )
    ]
    for name, setting in fusion_settings().items():
        if name in ModelArguments.__dataclass_fields__:  # declared above, with its own command-line default
            continue
        users = ", ".join(fusion for fusion, cls in FUSIONS.items() if name in cls.settings)
        help_text = f"({users}) {setting.help}"
        default = setting.default
        own = {fusion: cls.setting_defaults[name] for fusion, cls in FUSIONS.items() if name in cls.setting_defaults}
        if own:  # unset: the chosen fusion's own default (the config resolves it)
            default, value_type = None, setting.value_type | None
            help_text += f" Default: {setting.default}" + "".join(f"; {f}: {value}" for f, value in own.items())
            fields.append((name, value_type, field(default=default, metadata={"help": help_text})))
            continue
        fields.append((name, setting.value_type, field(default=default, metadata={"help": help_text})))
    # The training objective's settings, declared once in the config (`OBJECTIVE_SETTINGS`).
    for name, setting in OBJECTIVE_SETTINGS.items():
        value_type = setting.value_type if setting.default is not None else setting.value_type | None
        metadata = {"help": setting.help} | ({"choices": list(setting.choices)} if setting.choices else {})
        fields.append((name, value_type, field(default=setting.default, metadata=metadata)))
    return make_dataclass("ModelArguments", fields, bases=(ModelArguments,))


@dataclass
class DataArguments(LoaderArguments):
    """What to train on. The loader options (columns, class order, bad rows, ...) are inherited from
    `LoaderArguments`, shared with `mmfusion-data`, `mmfusion-predict` and `mmfusion-export`."""

    dataset: str = field(
        default="demo",
        metadata={"help": "demo | a Hateful Memes folder | a .jsonl/.csv file | a Hub dataset id"},
    )
    train_file: str | None = None
    validation_file: str | None = None
    test_file: str | None = None
    train_split: str = "train"
    validation_split: str | None = field(
        default=None, metadata={"help": "Default: the first of validation, dev_seen, dev, val that exists."}
    )
    test_split: str | None = field(
        default=None, metadata={"help": "Default: the first labeled one of test, test_seen that exists."}
    )
    predict_splits: list[str] | None = field(
        default=None, metadata={"help": "Splits to write predictions for (default: all, unlabeled ones included)."}
    )
    max_text_length: int = 128
    cache_image_features: bool = field(
        default=True, metadata={"help": "With a frozen vision tower, compute its features once and reuse them."}
    )
    cache_text_embeddings: bool = field(
        default=True,
        metadata={
            "help": "With a frozen text tower and a fusion that reads embeddings ("
            + ", ".join(fusion_names(reads_embeddings=True))
            + "), "
            "compute the caption embeddings once and reuse them."
        },
    )
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    report_num_errors: int = 10
    report_explained_errors: int = field(
        default=6,
        metadata={
            "help": "Explain this many of each split's most confident errors in the report (a PNG grid: meme with "
            "Grad-CAM heat map, caption coloured by Integrated Gradients); 0: none."
        },
    )


# The Trainer defaults of the notebook's Part 2, adapted to the demo (see README for the measured run).
TRAINING_DEFAULTS = {
    "output_dir": "outputs/demo-early-fusion",
    "do_train": True,
    "do_eval": True,
    "do_predict": True,
    "optim": "adamw_torch_fused",  # the same AdamW in one kernel: about 4x faster steps on CPU (measured)
    "learning_rate": 1e-3,
    "weight_decay": 0.01,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 0.1,
    "num_train_epochs": 12,
    "per_device_train_batch_size": 32,
    "per_device_eval_batch_size": 128,
    "eval_strategy": "epoch",
    "save_strategy": "epoch",
    "save_total_limit": 2,
    "load_best_model_at_end": True,
    "logging_steps": 10,
    "report_to": "none",
    "remove_unused_columns": False,  # the collator builds exactly the model inputs
    # Every trainable parameter gets a gradient on every step (tested, all fusions): DDP need not walk the autograd
    # graph looking for unused ones after each backward, which the Trainer asks for by default.
    "ddp_find_unused_parameters": False,
    "dataloader_pin_memory": torch.cuda.is_available(),
    "seed": 42,
}


def launcher_defaults() -> dict:
    """Under a multi-process launcher (torchrun, `accelerate launch`) on a machine without CUDA: DDP on the CPU over
    gloo. Left to itself, each process would find no GPU, skip the process group and train alone, so N processes
    would write N independent runs into one folder."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available():
        return {"use_cpu": True, "ddp_backend": "gloo"}
    return {}


@dataclass
class MMFusionTrainingArguments(TrainingArguments):
    """The Trainer's arguments plus `precision`, resolved against the hardware before they are validated."""

    # Default fp32 for now, so that results stay what they were on every machine; `auto` is the intended default
    # (issue 25) once the demo's published figures are re-measured under it.
    precision: str = field(
        default="fp32",
        metadata={
            "help": "auto | fp32 | bf16 | fp16. auto: bf16 where the hardware computes it natively (GPUs with bf16; "
            "CPUs with avx512_bf16/amx_bf16), fp16 on other GPUs, fp32 otherwise. An explicit --bf16/--fp16 wins "
            "over auto and fp32. bf16 on a CPU without native bf16 is emulated and many times slower (warned).",
            "choices": list(PRECISIONS),
        },
    )

    def __post_init__(self):
        resolve_precision(self)
        super().__post_init__()


def argument_parser() -> HfArgumentParser:
    return HfArgumentParser((model_arguments_class(), DataArguments, MMFusionTrainingArguments))


def read_config_file(path: str | Path) -> dict:
    """A YAML or JSON mapping of argument names to values."""
    path = Path(path)
    text = path.read_text()
    values = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of argument names to values, got {type(values).__name__}")
    return values


def parse_arguments(argv: list[str] | None = None) -> tuple[ModelArguments, DataArguments, TrainingArguments]:
    """`[CONFIG.yaml|CONFIG.json] [--name value ...]`: defaults < config file < command line."""
    parser = argument_parser()
    argv = list(argv or [])
    defaults = {**TRAINING_DEFAULTS, **launcher_defaults()}
    if argv and Path(argv[0]).suffix in {".yaml", ".yml", ".json"}:
        config_path = argv.pop(0)
        file_values = read_config_file(config_path)
        known = {action.dest for action in parser._actions}
        unknown = sorted(set(file_values) - known)
        if unknown:
            raise ValueError(f"{config_path}: unknown argument(s) {', '.join(unknown)}")
        defaults.update(file_values)
    parser.set_defaults(**defaults)
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    if model_args.decision_threshold is not None:
        from ..evaluation.thresholds import parse_policy

        parse_policy(model_args.decision_threshold)  # a bad policy stops here, before anything is built
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and training_args.world_size != launched:
        raise RuntimeError(
            f"Launched as {launched} processes, but this one joined a group of {training_args.world_size}: the "
            "processes would train independently into one --output_dir. Check the launcher's config and the "
            "--use_cpu / --ddp_backend flags."
        )
    warn_if_started_alone()  # `accelerate launch --num_processes N` without GPUs: one process, not N
    check_fsdp_device(training_args)
    return model_args, data_args, training_args


def check_fsdp_device(training_args) -> None:
    """Refuse FSDP on the CPU, which accelerate would silently replace with DDP.

    torch's `fully_shard` itself runs on CPU tensors over gloo, but accelerate turns FSDP on only for accelerator
    process groups (`AcceleratorState`: MULTI_GPU, MULTI_XPU, ...). CPU processes join as MULTI_CPU, the FSDP plugin
    of the launcher's config (or of `--fsdp`) is dropped without a word, and the Trainer wraps the model in DDP:
    every process holds the whole model, which is what FSDP was chosen to avoid.
    """
    requested = training_args.fsdp or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if requested and (training_args.use_cpu or not torch.cuda.is_available()):
        import accelerate

        raise RuntimeError(
            f"FSDP was requested (an FSDP accelerate config or --fsdp), but this run trains on the CPU: accelerate "
            f"{accelerate.__version__} enables FSDP only on GPUs (and other accelerators); on the CPU it would "
            "silently train with DDP instead, every process holding the whole model. On CPUs use "
            "configs/accelerate/cpu_ddp.yaml; FSDP (configs/accelerate/fsdp.yaml) needs CUDA GPUs."
        )
