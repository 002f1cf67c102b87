#!/usr/bin/env python
"""Train and evaluate an mmfusion image+text classifier with the Hugging Face Trainer.

    python train.py                                   # the demo: early fusion, small random towers, CPU
    python train.py configs/notebook_part2_early.yaml # a preset (YAML/JSON), command-line flags override it
    python train.py --dataset data/hateful_memes \\
        --text_model_name_or_path bert-base-uncased --vision_model_name_or_path microsoft/resnet-50
    python train.py --model_name_or_path outputs/demo-early-fusion --do_train false   # evaluate a checkpoint
    torchrun --nproc_per_node 2 train.py ...          # or: accelerate launch --config_file configs/accelerate/ddp.yaml

Writes to `--output_dir`: the best checkpoint (safetensors, config, processor, remote code), `all_results.json`,
`eval_report.{json,md}` with the modality ablation, `predictions_<split>.csv` (id,proba,label), PNG plots and a
model card (`README.md`).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import datasets
import transformers
from transformers import AutoProcessor, AutoTokenizer, set_seed
from transformers.trainer_utils import get_last_checkpoint

from mmfusion import MMFusionConfig, MMFusionForClassification, MMFusionProcessor, default_image_processor
from mmfusion.configuration_mmfusion import vision_grid_size
from mmfusion.data import load_image_text_dataset
from mmfusion.predictions import write_predictions_csv
from mmfusion.presets import small_text_config, small_vision_config
from mmfusion.tokenization import train_wordpiece_tokenizer
from mmfusion.training.arguments import DataArguments, ModelArguments, parse_arguments
from mmfusion.training.collator import MMFusionCollator
from mmfusion.training.inputs import prepare_model_inputs, training_autocast_dtype
from mmfusion.training.metrics import best_model_metric, make_compute_metrics
from mmfusion.training.model_card import write_model_card
from mmfusion.training.report import SplitPredictions, write_eval_report
from mmfusion.training.trainer import MMFusionTrainer

logger = logging.getLogger("train")
REPO_ROOT = Path(__file__).resolve().parent
VALIDATION_SPLITS = ("validation", "dev_seen", "dev", "val")
TEST_SPLITS = ("test", "test_seen")


def load_data(data_args: DataArguments) -> datasets.DatasetDict:
    files = {
        split: path
        for split, path in (
            ("train", data_args.train_file),
            ("validation", data_args.validation_file),
            ("test", data_args.test_file),
        )
        if path
    }
    if not files and data_args.dataset == "demo":
        return load_image_text_dataset("demo", seed=data_args.demo_seed)
    source = files or data_args.dataset
    options = {"on_bad_rows": data_args.on_bad_rows}
    if files or str(source).endswith((".jsonl", ".csv", ".tsv")):
        options.update(
            image_column=data_args.image_column,
            text_column=data_args.text_column,
            label_column=data_args.label_column,
            id_column=data_args.id_column,
            class_names=data_args.class_names,
        )
    elif is_hub_dataset(source):  # a Hub dataset with image/text/label columns
        source = datasets.load_dataset(source)
        options.update(
            image_column=data_args.image_column,
            text_column=data_args.text_column,
            label_column=data_args.label_column,
            class_names=data_args.class_names,
        )
    return load_image_text_dataset(source, **options)


def is_hub_dataset(name: str) -> bool:
    return name != "demo" and not Path(name).exists() and not name.endswith((".jsonl", ".csv", ".tsv"))


def is_labeled(split: datasets.Dataset) -> bool:
    return len(split) > 0 and min(split["label"]) >= 0


def resolve_splits(dataset: datasets.DatasetDict, data_args: DataArguments) -> dict[str, str | None]:
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
        "train": first_present(data_args.train_split, (), True),
        "validation": first_present(data_args.validation_split, VALIDATION_SPLITS, True),
        "test": first_present(data_args.test_split, TEST_SPLITS, True),
    }


def build_processor(model_args: ModelArguments, image_size: int, train_texts) -> MMFusionProcessor:
    if model_args.model_name_or_path:
        return AutoProcessor.from_pretrained(model_args.model_name_or_path, trust_remote_code=True)
    if model_args.text_model_name_or_path:
        tokenizer = AutoTokenizer.from_pretrained(model_args.text_model_name_or_path)
    else:  # a small random text tower gets a vocabulary learnt from the training captions
        tokenizer = train_wordpiece_tokenizer(train_texts, vocab_size=model_args.tokenizer_vocab_size)
    return MMFusionProcessor(default_image_processor(image_size), tokenizer)


def resolve_image_size(model_args: ModelArguments) -> int:
    if model_args.model_name_or_path:
        return MMFusionConfig.from_pretrained(model_args.model_name_or_path).image_size
    pretrained_vision = model_args.vision_model_name_or_path is not None
    return model_args.image_size or (224 if pretrained_vision else 64)


def build_model(model_args: ModelArguments, label_names: list[str], vocab_size: int, image_size: int):
    if model_args.model_name_or_path:
        model = MMFusionForClassification.from_pretrained(
            model_args.model_name_or_path, attn_implementation=model_args.attn_implementation
        )
        if model.config.num_labels != len(label_names):
            raise ValueError(
                f"{model_args.model_name_or_path} predicts {model.config.num_labels} classes; the data has "
                f"{len(label_names)} ({', '.join(label_names)})."
            )
        return model
    settings = dict(
        fusion=model_args.fusion,
        image_size=image_size,
        fusion_hidden_size=model_args.fusion_hidden_size,
        fusion_num_heads=model_args.fusion_num_heads,
        classifier_dropout=model_args.classifier_dropout,
        modality_dropout=model_args.modality_dropout,
        freeze_text_encoder=model_args.freeze_text_encoder,
        freeze_vision_encoder=model_args.freeze_vision_encoder,
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={name: index for index, name in enumerate(label_names)},
    )
    if bool(model_args.text_model_name_or_path) != bool(model_args.vision_model_name_or_path):
        raise ValueError("Give both --text_model_name_or_path and --vision_model_name_or_path, or neither.")
    if model_args.text_model_name_or_path:
        if model_args.vision_model_name_or_path.startswith("torchvision/"):
            from mmfusion.torchvision_resnet import torchvision_resnet_config

            vision_config = torchvision_resnet_config(model_args.vision_model_name_or_path.split("/", 1)[1])
        else:
            vision_config = transformers.AutoConfig.from_pretrained(model_args.vision_model_name_or_path)
        settings["num_image_tokens"] = model_args.num_image_tokens or default_image_tokens(vision_config, image_size)
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
    settings["num_image_tokens"] = model_args.num_image_tokens or default_image_tokens(vision_config, image_size)
    config = MMFusionConfig(text_config=text_config, vision_config=vision_config, **settings)
    config._attn_implementation = model_args.attn_implementation
    return MMFusionForClassification(config)


def default_image_tokens(vision_config, image_size: int) -> int:
    """The whole feature grid, pooled down to at most 7x7 = 49 tokens."""
    grid = vision_grid_size(vision_config, image_size) or 7
    return min(grid, 7) ** 2


def print_metrics_table(results: dict[str, float]) -> None:
    rows = sorted(
        (key.split("_", 1)[0], key.split("_", 1)[1], value)
        for key, value in results.items()
        if isinstance(value, float) and "_" in key and not key.endswith(("runtime", "per_second"))
    )
    print("\nFinal metrics")
    print(f"{'split':<8} {'metric':<28} {'value':>8}")
    for split, metric, value in rows:
        print(f"{split:<8} {metric:<28} {value:>8.4f}")


def main(argv: list[str] | None = None) -> dict:
    model_args, data_args, training_args = parse_arguments(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.WARNING)
    # This script's own progress messages on the main process; transformers stays at its --log_level.
    logger.setLevel(logging.INFO if training_args.should_log else logging.WARNING)
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())
    set_seed(training_args.seed)

    with training_args.main_process_first(desc="loading data"):
        raw = load_data(data_args)
    splits = resolve_splits(raw, data_args)
    if training_args.do_train and splits["train"] is None:
        raise ValueError(f"No labeled {data_args.train_split!r} split to train on; the data has {', '.join(raw)}")
    label_names = raw[next(iter(raw))].features["label"].names
    for limit, names in (
        (data_args.max_train_samples, ["train"]),
        (data_args.max_eval_samples, ["validation", "test"]),
    ):
        for role in names:
            if limit and splits[role]:
                raw[splits[role]] = raw[splits[role]].select(range(min(limit, len(raw[splits[role]]))))

    image_size = resolve_image_size(model_args)
    train_texts = raw[splits["train"] or next(iter(raw))]["text"]
    processor = build_processor(model_args, image_size, train_texts)
    model = build_model(model_args, label_names, len(processor.tokenizer), image_size)
    use_features = model.config.freeze_vision_encoder and data_args.cache_image_features
    logger.info(
        "Model: %s fusion, %.1fM parameters (%.1fM trainable); image inputs: %s",
        model.config.fusion,
        model.num_parameters() / 1e6,
        model.num_parameters(only_trainable=True) / 1e6,
        "cached frozen-tower features" if use_features else "cached uint8 pixels",
    )

    with training_args.main_process_first(desc="preparing model inputs"):
        prepared = prepare_model_inputs(
            raw,
            processor,
            model,
            max_length=data_args.max_text_length,
            use_image_features=use_features,
            device=training_args.device,
            autocast_dtype=training_autocast_dtype(training_args),
        )

    if training_args.metric_for_best_model in (None, "loss") and splits["validation"]:
        training_args.metric_for_best_model = best_model_metric(len(label_names))
        training_args.greater_is_better = True
    if not splits["validation"]:
        training_args.eval_strategy = "no"
        training_args.load_best_model_at_end = False

    collator = MMFusionCollator.for_processor(
        processor, pad_to_multiple_of=8 if training_args.device.type == "cuda" else 1
    )
    trainer = MMFusionTrainer(
        model=model,
        args=training_args,
        train_dataset=prepared[splits["train"]] if training_args.do_train else None,
        eval_dataset=prepared[splits["validation"]] if splits["validation"] else None,
        data_collator=collator,
        compute_metrics=make_compute_metrics(label_names),
        processing_class=processor,
    )

    results: dict[str, float] = {}
    if training_args.do_train:
        checkpoint = training_args.resume_from_checkpoint
        if checkpoint is None and os.path.isdir(training_args.output_dir):
            checkpoint = get_last_checkpoint(training_args.output_dir)
            if checkpoint:
                logger.info("Resuming from the last checkpoint in the output folder: %s", checkpoint)
        train_result = trainer.train(resume_from_checkpoint=checkpoint)
        print(
            f"[rank {training_args.process_index}/{training_args.world_size}] trained "
            f"{trainer.state.global_step} steps on {len(trainer.train_dataset)} examples",
            flush=True,
        )
        trainer.save_model()  # the best model (load_best_model_at_end), with processor and remote code
        trainer.save_state()
        results.update({f"train_{k.removeprefix('train_')}": v for k, v in train_result.metrics.items()})

    for role in ("validation", "test"):
        if training_args.do_eval and splits[role]:
            prefix = "eval" if role == "validation" else "test"
            results.update(trainer.evaluate(prepared[splits[role]], metric_key_prefix=prefix))

    predictions, ablations = {}, {}
    default_predict = [name for name in raw if name != splits["train"]] if training_args.do_predict else []
    predict_splits = data_args.predict_splits or default_predict
    for name in predict_splits:
        probabilities = trainer.predict_probabilities(prepared[name])
        predictions[name] = SplitPredictions(
            ids=list(raw[name]["id"]),
            texts=list(raw[name]["text"]),
            labels=raw[name]["label"],
            probabilities=probabilities,
        )
        if training_args.do_eval and is_labeled(raw[name]) and name != splits["train"]:
            ablations[name] = trainer.ablation_probabilities(prepared[name], processor)

    if trainer.is_world_process_zero():
        output_dir = Path(training_args.output_dir)
        trainer.save_metrics("all", results)
        for name, split_predictions in predictions.items():
            write_predictions_csv(
                output_dir / f"predictions_{name}.csv",
                split_predictions.ids,
                split_predictions.probabilities,
                label_names,
            )
        report = write_eval_report(
            output_dir,
            label_names=label_names,
            predictions=predictions,
            ablations=ablations,
            log_history=trainer.state.log_history,
            num_errors=data_args.report_num_errors,
        )
        write_model_card(
            output_dir,
            config=model.config,
            eval_report=report,
            dataset_name=data_args.dataset,
            base_models=[
                m
                for m in (
                    model_args.model_name_or_path,
                    model_args.text_model_name_or_path,
                    model_args.vision_model_name_or_path,
                )
                if m
            ],
            template_path=REPO_ROOT / "model_card.md",
            model_id=training_args.hub_model_id,
            dataset_id=data_args.dataset if is_hub_dataset(data_args.dataset) else None,
            training_summary={
                "epochs": training_args.num_train_epochs,
                "learning_rate": training_args.learning_rate,
                "batch_size": training_args.per_device_train_batch_size,
                "optimizer": str(training_args.optim),
                "seed": training_args.seed,
            },
        )
        print_metrics_table(results)
        print(f"\nSaved the model, processor, metrics, report, predictions and model card to {output_dir}/")
    if training_args.push_to_hub:
        trainer.push_to_hub(commit_message="mmfusion: trained model, evaluation report and model card")
    release_process_group(training_args)
    return results


def release_process_group(training_args) -> None:
    """Under torchrun, shut this rank's process group down before the interpreter exits.

    Left to interpreter teardown, gloo's worker threads can outlive Python and abort a run that
    succeeded ("terminate called without an active exception", exit code -6). No barrier first: the
    last collective is behind us, and a rank waiting here on rank 0's upload to the Hub could time out.
    """
    state = training_args.distributed_state
    if state is not None and state.use_distributed:
        state.destroy_process_group()


if __name__ == "__main__":
    main()
