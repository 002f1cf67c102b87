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
import sys
from contextlib import nullcontext
from pathlib import Path

import transformers
from transformers import set_seed

from mmfusion.evaluation.metrics import best_model_metric, make_compute_metrics
from mmfusion.evaluation.model_card import write_model_card
from mmfusion.evaluation.report import format_metrics_table, write_eval_report
from mmfusion.fusions import FUSIONS
from mmfusion.inference.sharding import launcher_state
from mmfusion.training.arguments import parse_arguments
from mmfusion.training.baselines import baseline_arguments, read_baseline_reports
from mmfusion.training.card import MODEL_CARD_TEMPLATE, card_arguments
from mmfusion.training.collator import collator_for
from mmfusion.training.inputs import prepare_model_inputs, training_autocast_dtype
from mmfusion.training.memory import metrics_in_mode, run_memory_step
from mmfusion.training.operating_point import run_operating_point
from mmfusion.training.output_lock import OutputDirLock
from mmfusion.training.resume import checkpoint_to_resume, record_run_settings, run_settings
from mmfusion.training.rgcl import RGCLTrainer
from mmfusion.training.setup import (
    build_model,
    build_processor,
    check_train_split,
    is_labeled,
    is_multi_label_data,
    label_names_of,
    limit_samples,
    load_data,
    resolve_image_size,
    resolve_splits,
)
from mmfusion.training.trainer import MMFusionTrainer

logger = logging.getLogger("train")
REPO_ROOT = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> dict:
    # 1. Arguments and logging: defaults < config file < command line.
    model_args, data_args, training_args = parse_arguments(sys.argv[1:] if argv is None else argv)
    # One run per output folder (held by the main process; also proves the folder writable in the first second).
    with OutputDirLock(training_args.output_dir) if training_args.process_index == 0 else nullcontext():
        if model_args.unimodal_baselines:  # same data, towers, recipe and seed; each into <output_dir>/baselines/
            for fusion, (baseline_model_args, baseline_training_args) in baseline_arguments(
                model_args, training_args
            ).items():
                logger.info("Unimodal baseline: %s-only model into %s", fusion, baseline_training_args.output_dir)
                train_and_evaluate(baseline_model_args, data_args, baseline_training_args)
        return train_and_evaluate(model_args, data_args, training_args)


def train_and_evaluate(model_args, data_args, training_args) -> dict:
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.WARNING)
    # This script's own progress messages on the main process; transformers stays at its --log_level.
    logger.setLevel(logging.INFO if training_args.should_log else logging.WARNING)
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())
    set_seed(training_args.seed)
    # A rerun resumes the output folder's last checkpoint only if that run had these settings: checked now, before
    # any work (the settings are taken as parsed, before anything below fills in defaults).
    settings = run_settings(model_args, data_args, training_args)
    checkpoint = checkpoint_to_resume(settings, training_args) if training_args.do_train else None

    # 2. Data: every row checked once at load time, then the splits that play train/validation/test.
    with training_args.main_process_first(desc="loading data"):
        raw, load_report = load_data(data_args)
    label_names = label_names_of(raw, data_args)
    multi_label = is_multi_label_data(raw)  # MAMI B, MMHS150K votes: a set of labels per row (BCE, sigmoids)
    splits = resolve_splits(raw, data_args)
    if training_args.do_train:
        check_train_split(raw, splits, data_args)
    limit_samples(raw, splits, data_args)

    # 3. Processor and model.
    image_size = resolve_image_size(model_args)
    train_texts = raw[splits["train"] or next(iter(raw))]["text"]
    # The caption limit is set on the processor here, once: training tokenizes through it and it is saved with
    # the checkpoint, so every model served from it truncates captions where training did.
    processor = build_processor(model_args, image_size, train_texts, max_text_length=data_args.max_text_length)
    model = build_model(model_args, label_names, len(processor.tokenizer), image_size, multi_label=multi_label)
    fusion = FUSIONS[model.config.fusion]
    use_features = model.config.freeze_vision_encoder and data_args.cache_image_features and fusion.needs_image
    if fusion.joint_encoder:
        image_inputs = "the vision-language model's processor, per batch"
    elif not fusion.needs_image:
        image_inputs = "none (no vision tower)"
    elif use_features:
        image_inputs = "cached frozen-tower " + ("embeddings" if fusion.reads_embeddings else "features")
    else:
        image_inputs = "cached uint8 pixels"
    logger.info(
        "Model: %s fusion, %.1fM parameters (%.1fM trainable); image inputs: %s; precision: %s on %s",
        model.config.fusion,
        model.num_parameters() / 1e6,
        model.num_parameters(only_trainable=True) / 1e6,
        image_inputs,
        training_args.precision,
        training_args.device.type,
    )

    # 4. Model inputs, computed once into the datasets cache (tokens, resized pixels or frozen-tower features).
    #    Under a launcher every process computes one share of the rows on its own device and reads the others'
    #    (so not main-process-first: the main process would wait at the shares' barrier for the others forever).
    prepared = prepare_model_inputs(
        raw,
        processor,
        model,
        max_length=data_args.max_text_length,
        use_image_features=use_features,
        use_text_embeddings=None if data_args.cache_text_embeddings else False,
        device=training_args.device,
        autocast_dtype=training_autocast_dtype(training_args),
        state=launcher_state(),
    )

    # 5. The Trainer: model selection on the validation split's headline metric (AUROC, macro-F1, or for a
    #    multi-label task macro AUROC: threshold-free, the per-label thresholds are chosen after training).
    if training_args.metric_for_best_model in (None, "loss") and splits["validation"]:
        training_args.metric_for_best_model = best_model_metric(len(label_names), multi_label)
        training_args.greater_is_better = True
    if not splits["validation"]:
        training_args.eval_strategy = "no"
        training_args.load_best_model_at_end = False
    collator = collator_for(
        processor,
        pad_to_multiple_of=8 if training_args.device.type == "cuda" else 1,
        num_labels=len(label_names) if multi_label else None,
    )
    # --objective rgcl: RGCL's retrieval-guided contrastive loss beside the classification loss.
    trainer_class = RGCLTrainer if model.config.objective == "rgcl" else MMFusionTrainer
    trainer = trainer_class(
        model=model,
        args=training_args,
        train_dataset=prepared[splits["train"]] if training_args.do_train else None,
        eval_dataset=prepared[splits["validation"]] if splits["validation"] else None,
        data_collator=collator,
        compute_metrics=make_compute_metrics(label_names, multi_label),
        processing_class=processor,
        fusion_learning_rate=model_args.fusion_learning_rate,
    )

    # 6. Train, resuming from the output folder's last checkpoint when there is one (made with these settings).
    results: dict[str, float] = {}
    if training_args.do_train:
        if checkpoint and not training_args.resume_from_checkpoint:
            logger.info("Resuming from the last checkpoint in the output folder: %s", checkpoint)
        record_run_settings(settings, training_args)
        train_result = trainer.train(resume_from_checkpoint=checkpoint)
        print(
            f"[rank {training_args.process_index}/{training_args.world_size}] trained "
            f"{trainer.state.global_step} steps on {len(trainer.train_dataset)} examples",
            flush=True,
        )
        trainer.save_model()  # the best model (load_best_model_at_end), with processor and remote code
        trainer.save_state()
        results.update({f"train_{k.removeprefix('train_')}": v for k, v in train_result.metrics.items()})

    # 7. Evaluate; calibrate the scores and choose the operating point on the validation split (stored in the
    #    config); predict every split (unlabeled test splits included) and score the labeled ones with the
    #    modality ablation.
    for role in ("validation", "test"):
        if training_args.do_eval and splits[role]:
            prefix = "eval" if role == "validation" else "test"
            results.update(trainer.evaluate(prepared[splits[role]], metric_key_prefix=prefix))
    # A checkpoint that is only evaluated keeps its own temperature; a policy given for it is applied and saved
    # when the output folder is the checkpoint's own.
    model_args.calibrate = model_args.calibrate and training_args.do_train
    saved_here = training_args.do_train or (
        model_args.model_name_or_path is not None
        and Path(model_args.model_name_or_path).resolve() == Path(training_args.output_dir).resolve()
    )
    # The labelled memory (mmfusion/memory.py): the training split embedded by the trained model; its kNN scores
    # for every other split, the prediction mode chosen on validation inside run_operating_point.
    knn_scores = run_memory_step(trainer, raw, prepared, splits, model_args)
    try:
        known_logits = run_operating_point(
            trainer,
            raw,
            prepared,
            splits,
            model_args,
            training_args.output_dir,
            save=saved_here,
            trained=training_args.do_train,
            knn_scores=knn_scores,
        )
    except ValueError as error:  # an unreachable target: stop, naming the best value (the model is saved)
        raise SystemExit(
            f"--decision_threshold {model_args.decision_threshold}: {error}\nThe trained model is in "
            f"{training_args.output_dir}; choose another operating point without training again: python train.py "
            f"--model_name_or_path {training_args.output_dir} --output_dir {training_args.output_dir} "
            "--do_train false --decision_threshold ..."
        ) from error
    if fusion.joint_encoder and training_args.do_train and trainer.is_world_process_zero():
        save_joint_model(trainer.model, training_args.output_dir, model_args.vision_language_save)
    if (
        getattr(trainer.model, "memory", None) is not None
        and training_args.do_train
        and trainer.is_world_process_zero()
    ):
        trainer.model.save_memory(training_args.output_dir)  # beside the weights, with the config that names the mode
        trainer.model.config.save_pretrained(training_args.output_dir)
    predictions, ablations = {}, {}
    default_predict = [name for name in raw if name != splits["train"]] if training_args.do_predict else []
    for name in data_args.predict_splits or default_predict:
        predictions[name] = trainer.predict_split(
            raw[name], prepared[name], name, logits=known_logits.get(name), knn_scores=knn_scores.get(name)
        )
        if training_args.do_eval and is_labeled(raw[name]) and name != splits["train"]:
            ablations[name] = trainer.ablation_probabilities(prepared[name], processor)

    metrics_in_mode(results, predictions, splits, model.config)  # a memory's mode: the metrics of what it predicts

    # 8. Outputs (main process): metrics, predictions in the challenge format, the report and the model card.
    if trainer.is_world_process_zero():
        output_dir = Path(training_args.output_dir)
        trainer.save_metrics("all", results)
        for name, split_predictions in predictions.items():
            split_predictions.to_csv(output_dir / f"predictions_{name}.csv")
        report = write_eval_report(
            output_dir,
            label_names=label_names,
            predictions=predictions,
            ablations=ablations,
            log_history=trainer.state.log_history,
            best_step=trainer.state.best_global_step,
            overlap=load_report.overlap,
            num_errors=data_args.report_num_errors,
            fusion=model.config.fusion,
            config=model.config,
            unimodal_baselines=read_baseline_reports(output_dir) if model_args.unimodal_baselines else None,
        )
        write_model_card(
            output_dir,
            config=model.config,
            eval_report=report,
            template_path=REPO_ROOT / MODEL_CARD_TEMPLATE,
            **card_arguments(model_args, data_args, training_args),
        )
        if fusion.joint_encoder and data_args.report_explained_errors > 0:
            logger.info("The report's explained errors are not available for a joint vision-language model yet.")
        elif trainer.is_fsdp_enabled and data_args.report_explained_errors > 0:
            # The explanations run the model here on the main process alone; a sharded model's forward needs every
            # process (it waits for them until the process group times out). One process on the saved checkpoint
            # (`--model_name_or_path OUTPUT --do_train false`) writes the report with them.
            logger.info("The report's explained errors are not computed under FSDP; evaluate the saved checkpoint.")
        elif data_args.report_explained_errors > 0:  # the report's error panel: why the most confident errors
            from mmfusion.inference.explain import explain_report_errors

            explain_report_errors(output_dir, trainer.model, processor, raw, data_args.report_explained_errors)
        print(format_metrics_table(results))
        print(f"\nSaved the model, processor, metrics, report, predictions and model card to {output_dir}/")
    if training_args.push_to_hub:
        trainer.push_to_hub(commit_message="mmfusion: trained model, evaluation report and model card")
    release_process_group(training_args)
    return results


def save_joint_model(model, output_dir: str, layout: str) -> None:
    """A trained joint model's final form in `output_dir`, over the Trainer's save (which keeps the LoRA layers
    unmerged, as its checkpoints do): merged (`full`, self-contained) or its adapter and head (`adapter`, with the
    base model's id); `auto` chooses by size (`mmfusion.vision_language.default_weights_layout`)."""
    from mmfusion.vision_language import default_weights_layout

    if layout == "auto":
        layout = default_weights_layout(model)
    if layout != model.config.vision_language_weights:
        model.save_pretrained(output_dir, vision_language_weights=layout)
        logger.info("Saved the joint model as %s weights (vision_language_weights=%r)", layout, layout)


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
