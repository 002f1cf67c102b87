"""From train.py's arguments to objects: the data and its splits, the processor and the model.

The one place that interprets `ModelArguments`/`DataArguments`; train.py, the benchmarks and the tests build through
it, so a flag means the same thing everywhere.
"""

from __future__ import annotations

import datasets
from transformers import AutoConfig, AutoProcessor
from transformers.utils import logging

from ..checkpoints import check_checkpoint
from ..configuration_mmfusion import DUAL_ENCODER_TOWERS, OBJECTIVE_SETTINGS, MMFusionConfig
from ..data import load_image_text_dataset
from ..decisions import MULTI_LABEL
from ..evaluation.predictions import has_label
from ..fusions import fusion_settings
from ..modeling_mmfusion import MMFusionForClassification
from ..processing_mmfusion import MMFusionProcessor, limit_text_length, tower_image_processor
from ..torchvision_resnet import torchvision_architecture
from .arguments import DataArguments, ModelArguments
from .presets import small_text_config, small_vision_config
from .tokenization import train_wordpiece_tokenizer

logger = logging.get_logger(__name__)

VALIDATION_SPLITS = ("validation", "dev_seen", "dev", "val")
TEST_SPLITS = ("test", "test_seen")
SPLIT_ROLES = ("train", "validation", "test")


def load_data(data_args: DataArguments):
    """The data the arguments name (any source `mmfusion.data` reads) and its `LoadReport`."""
    return load_image_text_dataset(
        data_args.dataset,
        train_file=data_args.train_file,
        validation_file=data_args.validation_file,
        test_file=data_args.test_file,
        **data_args.as_loader_kwargs(),
        return_report=True,
    )


def is_multi_label_data(dataset: datasets.DatasetDict | datasets.Dataset) -> bool:
    """Whether the data's label is a list of classes per row (MAMI B, MMHS150K votes: `datasets.List(ClassLabel)`)."""
    split = dataset[next(iter(dataset))] if isinstance(dataset, datasets.DatasetDict) else dataset
    return isinstance(split.features["label"], (datasets.List, datasets.Sequence))


def label_names_of(dataset: datasets.DatasetDict, data_args: DataArguments | None = None) -> list[str]:
    """The class names of the data (the labels of a multi-label task, in class-id order)."""
    feature = dataset[next(iter(dataset))].features["label"]
    if isinstance(feature, (datasets.List, datasets.Sequence)):
        feature = feature.feature
    return list(feature.names)


def is_labeled(split: datasets.Dataset) -> bool:
    """Every row has a label (multi-label: a list of classes, an empty one included; `None` is unlabeled)."""
    return len(split) > 0 and all(has_label(label) for label in split["label"])


def resolve_splits(dataset: datasets.DatasetDict, data_args: DataArguments) -> dict[str, str | None]:
    """The split playing each role (`train`, `validation`, `test`): the one named in the arguments, else the first
    labeled one of the usual names; None where there is none."""

    def first_present(preferred, candidates, need_labels):
        if preferred is not None:
            if preferred not in dataset:
                raise ValueError(f"Split {preferred!r} not found; the data has {', '.join(dataset)}")
            return preferred
        for name in candidates:
            if name in dataset and (not need_labels or is_labeled(dataset[name])):
                return name
        return None

    return {
        "train": first_present(data_args.train_split, (), False),
        "validation": first_present(data_args.validation_split, VALIDATION_SPLITS, True),
        "test": first_present(data_args.test_split, TEST_SPLITS, True),
    }


def check_train_split(dataset: datasets.DatasetDict, splits: dict[str, str | None], data_args: DataArguments) -> None:
    """Refuse, before anything is built, a training split that is missing or has unlabeled rows (label -1)."""
    name = splits["train"]
    if name is None:
        raise ValueError(f"No {data_args.train_split!r} split to train on; the data has {', '.join(dataset)}.")
    labels = dataset[name]["label"]
    unlabeled = sum(1 for label in labels if not has_label(label))
    if unlabeled:
        raise ValueError(
            f"The {name!r} split has {unlabeled} unlabeled rows of {len(labels)}: every training row needs a label. "
            f"Labels are read from the column {data_args.label_column!r} (--label_column); check that it is the "
            "right column, or train on a labeled split (--train_split)."
        )


def limit_samples(dataset: datasets.DatasetDict, splits: dict[str, str | None], data_args: DataArguments) -> None:
    """Cut the training split to `max_train_samples` and the evaluation splits to `max_eval_samples`, in place."""
    for limit, roles in (
        (data_args.max_train_samples, ["train"]),
        (data_args.max_eval_samples, ["validation", "test"]),
    ):
        for role in roles:
            if limit and splits[role]:
                dataset[splits[role]] = dataset[splits[role]].select(range(min(limit, len(dataset[splits[role]]))))


def resolve_image_size(model_args: ModelArguments) -> int:
    """`--image_size`, else the checkpoint's, else a dual encoder's (CLIP's position embeddings fix it), else 224 for
    a pretrained vision tower and 64 for the small one."""
    if model_args.model_name_or_path:
        check_checkpoint(model_args.model_name_or_path)  # a broken folder fails here, naming the bad file
        return MMFusionConfig.from_pretrained(model_args.model_name_or_path).image_size
    if model_args.image_size:
        return model_args.image_size
    if getattr(model_args, "vision_language_model_name_or_path", None):
        return 224  # only the blank image of the modality ablation has this size: the VLM's processor sizes images
    vision = model_args.vision_model_name_or_path
    if vision is None:
        return 64
    tower_config = dual_encoder_vision_config(vision)
    return tower_config.image_size if tower_config is not None else 224


def dual_encoder_vision_config(vision_model_name_or_path: str):
    """The vision tower config of a dual encoder checkpoint (CLIP, SigLIP) or of one of its towers; else None."""
    if torchvision_architecture(vision_model_name_or_path):
        return None
    config = AutoConfig.from_pretrained(vision_model_name_or_path)
    config = getattr(config, "vision_config", None) or config
    return config if config.model_type in DUAL_ENCODER_TOWERS else None


def build_image_processor(vision_model_name_or_path: str | None, image_size: int):
    """Resize to `image_size` x `image_size` without cropping, with the vision checkpoint's mean/std (ImageNet's for
    torchvision and the small random tower): `tower_image_processor`, which the saved processor's own
    `MMFusionProcessor.from_text_vision_pretrained` uses too."""
    return tower_image_processor(vision_model_name_or_path, image_size)


def build_processor(
    model_args: ModelArguments, image_size: int, train_texts, max_text_length: int | None = None
) -> MMFusionProcessor:
    """The checkpoint's processor, or the text tower's tokenizer (a dual encoder's: CLIP's, with its 77-token limit)
    or (small random tower) a vocabulary learnt from the training captions, with `build_image_processor`.

    `max_text_length` (`--max_text_length`) is set here, once, on the processor (`limit_text_length`): training
    tokenizes through it (`tokenize_captions`) and it is saved with the checkpoint, so the predictor, the pipeline
    and the ONNX export truncate captions where training did. The limit is never raised: None keeps the tokenizer's
    own, and a checkpoint keeps the one it was trained with unless `max_text_length` is lower.
    """
    if model_args.model_name_or_path:
        processor = AutoProcessor.from_pretrained(model_args.model_name_or_path, trust_remote_code=True)
    elif getattr(model_args, "vision_language_model_name_or_path", None):  # fusion="joint": the VLM's own processor
        processor = MMFusionProcessor.from_vision_language_pretrained(
            model_args.vision_language_model_name_or_path,
            prompt_template=getattr(model_args, "prompt_template", None),
            max_pixels=getattr(model_args, "vision_language_max_pixels", None),
        )
    elif model_args.text_model_name_or_path:
        processor = MMFusionProcessor.from_text_vision_pretrained(
            model_args.text_model_name_or_path, model_args.vision_model_name_or_path, image_size=image_size
        )
    else:
        tokenizer = train_wordpiece_tokenizer(train_texts, vocab_size=model_args.tokenizer_vocab_size)
        processor = MMFusionProcessor(
            build_image_processor(model_args.vision_model_name_or_path, image_size), tokenizer
        )
    limit_text_length(processor, max_text_length)
    return processor


def build_model(
    model_args: ModelArguments,
    label_names: list[str],
    vocab_size: int,
    image_size: int,
    *,
    multi_label: bool = False,
) -> MMFusionForClassification:
    """A checkpoint to fine-tune or evaluate, two pretrained towers with fresh fusion layers, or small random towers.

    `multi_label`: the task gives a set of labels per row; the model's `problem_type` is then
    `"multi_label_classification"` (binary cross-entropy per label, sigmoid scores)."""
    if model_args.model_name_or_path:
        model = MMFusionForClassification.from_pretrained(
            model_args.model_name_or_path, attn_implementation=model_args.attn_implementation
        )
        if model.config.num_labels != len(label_names):
            raise ValueError(
                f"{model_args.model_name_or_path} predicts {model.config.num_labels} classes; the data has "
                f"{len(label_names)} ({', '.join(label_names)})."
            )
        if (model.config.problem_type == MULTI_LABEL) != multi_label:
            kind = "multi-label" if multi_label else "single-label"
            raise ValueError(
                f"{model_args.model_name_or_path} is {'' if model.config.problem_type == MULTI_LABEL else 'not '}a "
                f"multi-label model (problem_type {model.config.problem_type!r}); the data's task is {kind}."
            )
        # This run's objective (the flags), recorded in the config it saves.
        for name in OBJECTIVE_SETTINGS:
            if hasattr(model_args, name):
                setattr(model.config, name, getattr(model_args, name))
        model.config.validate_objective()
        return model
    settings = dict(
        fusion=model_args.fusion,
        image_size=image_size,
        num_image_tokens=model_args.num_image_tokens,  # None: the tower's grid, at most 7x7
        classifier_dropout=model_args.classifier_dropout,
        modality_dropout=model_args.modality_dropout,
        freeze_text_encoder=model_args.freeze_text_encoder,
        freeze_vision_encoder=model_args.freeze_vision_encoder,
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={name: index for index, name in enumerate(label_names)},
    )
    if multi_label:
        settings["problem_type"] = MULTI_LABEL
    # The fusions' own settings (flags from `model_arguments_class`); a bare `ModelArguments` leaves the defaults.
    settings.update(
        {
            name: getattr(model_args, name)
            for name in fusion_settings()
            if name != "image_gate" and hasattr(model_args, name)
        }
    )
    # The training objective (`OBJECTIVE_SETTINGS`, flags from `model_arguments_class`).
    settings.update({name: getattr(model_args, name) for name in OBJECTIVE_SETTINGS if hasattr(model_args, name)})
    if model_args.image_gate is not None:  # else: on for pretrained towers (from_text_vision_pretrained), off here
        settings["image_gate"] = model_args.image_gate
    if not model_args.dual_encoder_projections:  # a dual encoder's pooler outputs (RGCL)
        settings["projection_dim"] = None
    if model_args.text_pooling is not None:  # else: the tower's own (sentence-transformers) or the config default
        settings["text_pooling"] = model_args.text_pooling
    if getattr(model_args, "vision_language_model_name_or_path", None):
        return build_joint_model(model_args, settings)
    if bool(model_args.text_model_name_or_path) != bool(model_args.vision_model_name_or_path):
        raise ValueError("Give both --text_model_name_or_path and --vision_model_name_or_path, or neither.")
    if model_args.text_model_name_or_path:
        return MMFusionForClassification.from_text_vision_pretrained(
            model_args.text_model_name_or_path,
            model_args.vision_model_name_or_path,
            torchvision_weights=model_args.torchvision_weights,
            text_kwargs={"attn_implementation": model_args.attn_implementation},
            **settings,
        )
    text_config = small_text_config(
        vocab_size, hidden_size=model_args.small_text_hidden_size, num_layers=model_args.small_text_layers
    )
    vision_config = small_vision_config(model_args.small_vision_width, model_args.small_vision_stages)
    config = MMFusionConfig(text_config=text_config, vision_config=vision_config, **settings)
    config._attn_implementation = model_args.attn_implementation
    return MMFusionForClassification(config)


def build_joint_model(model_args: ModelArguments, settings: dict) -> MMFusionForClassification:
    """fusion="joint": `MMFusionForClassification.from_vision_language_pretrained` with the joint fusion's settings
    (LoRA, prompt, pooling, head, answer-token loss), the dtype and, for QLoRA, a 4-bit base."""
    import torch

    if model_args.text_model_name_or_path or model_args.vision_model_name_or_path:
        raise ValueError(
            "--vision_language_model_name_or_path is the only tower of a joint model: leave out "
            "--text_model_name_or_path and --vision_model_name_or_path."
        )
    if model_args.fusion not in ("early", "joint"):  # "early" is the flag's default: not a choice the user made
        raise ValueError(f"--vision_language_model_name_or_path builds fusion=joint, not {model_args.fusion!r}.")
    settings = {k: v for k, v in settings.items() if k not in ("fusion", "num_image_tokens", "image_gate")}
    if settings.get("problem_type") == MULTI_LABEL and settings.get("answer_loss_weight"):
        raise ValueError("--answer_loss_weight needs one class per example; this task is multi-label.")
    model_kwargs = {"attn_implementation": model_args.attn_implementation}
    if model_args.vision_language_dtype:
        model_kwargs["dtype"] = getattr(torch, model_args.vision_language_dtype)
    if model_args.vision_language_load_in_4bit:
        if not torch.cuda.is_available():
            raise ValueError("--vision_language_load_in_4bit (QLoRA) needs a CUDA GPU (bitsandbytes).")
        from transformers import BitsAndBytesConfig

        model_kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
        )
    return MMFusionForClassification.from_vision_language_pretrained(
        model_args.vision_language_model_name_or_path, model_kwargs=model_kwargs, **settings
    )


__all__ = [
    "SPLIT_ROLES",
    "TEST_SPLITS",
    "VALIDATION_SPLITS",
    "build_image_processor",
    "build_joint_model",
    "build_model",
    "build_processor",
    "check_train_split",
    "dual_encoder_vision_config",
    "is_labeled",
    "is_multi_label_data",
    "label_names_of",
    "limit_samples",
    "load_data",
    "resolve_image_size",
    "resolve_splits",
]
