"""`MMFusionPredictor`: image+caption in, class probabilities out, on PyTorch or ONNX Runtime."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import datasets
import numpy as np
from tqdm.auto import tqdm

from ..checkpoints import check_checkpoint
from ..configuration_mmfusion import FUSIONS
from ..data.options import LoaderArguments
from ..decisions import check_decision_threshold, check_temperature, decide, is_multi_label
from ..evaluation.predictions import Predictions, config_probabilities, prediction_record
from ..parallel import image_thread_pool, usable_cpu_count
from .backends import (
    BACKENDS,
    EXPORT_INFO_FILENAME,
    ONNX_FILENAME,
    InferenceBackend,
    OnnxBackend,
    TorchBackend,
    resolve_model_folder,
)
from .images import ImageInput, load_image
from .quantization import warn_if_int8_made_for_another_cpu
from .sharding import (
    batch_aligned_shares,
    gather_in_order,
    gather_rows_in_order,
    launcher_state,
    main_process_first,
)


def label_names_from_config(config) -> list[str]:
    """Class names in class-id order (`config.id2label` may have int or str keys after a JSON round trip)."""
    id2label = {int(index): name for index, name in config.id2label.items()}
    return [id2label[index] for index in range(len(id2label))]


class MMFusionPredictor:
    r"""
    Classify (image, caption) pairs with an mmfusion checkpoint, in batches.

    Build it with `MMFusionPredictor.from_pretrained`; the constructor takes already-loaded parts.

    Args:
        backend (`TorchBackend` or `OnnxBackend`):
            Runs the model on processed batches.
        processor (`MMFusionProcessor`):
            Turns images and captions into model inputs.
        config (`MMFusionConfig`):
            The checkpoint's config (class names, problem type, image size).
        batch_size (`int`, *optional*, defaults to 32):
            Pairs per model call in `predict_batch` and `predict_file`.
        threshold (`float` or `list[float]`, *optional*):
            The decision threshold, instead of the checkpoint's `config.decision_threshold` (see
            `mmfusion.decisions`: two classes, class 1 is predicted when its probability reaches it; a multi-label
            checkpoint: one per label, or one for all, every label reaching its threshold is predicted). Each
            `predict*` call also takes `threshold=`.
        temperature (`float`, *optional*):
            Instead of the checkpoint's `config.calibration_temperature` (1.0 gives the raw softmax).
        memory (`mmfusion.memory.LabelledMemory`, *optional*):
            The checkpoint's labelled memory (`from_pretrained` loads it, for either backend): the probabilities
            follow `config.prediction_mode` (head, kNN over the memory, or their mix), and `predict*(...,
            neighbors=k)` return each pair's `k` nearest labelled examples.

    Example:

    ```python
    >>> from mmfusion.inference import MMFusionPredictor
    >>> predictor = MMFusionPredictor.from_pretrained("outputs/demo-early-fusion")
    >>> predictor.predict("meme.png", "look at this sun")
    {'label': 'hateful', 'label_id': 1, 'probabilities': {'not_hateful': 0.02, 'hateful': 0.98}}
    >>> predictions = predictor.predict_file("data/hateful_memes", split="test_unseen")
    >>> predictions.to_csv("submission.csv")
    ```

    A multi-label checkpoint (`config.problem_type == "multi_label_classification"`, e.g. MAMI sub-task B) scores
    every label with a sigmoid and returns every label at or above its threshold (`config.decision_threshold`, one
    per label; 0.5 without): `{"labels": [...], "label_ids": [...], "probabilities": {...}}`.
    """

    def __init__(
        self,
        backend: InferenceBackend,
        processor,
        config,
        batch_size: int = 32,
        *,
        threshold=None,
        temperature=None,
        memory=None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.backend = backend
        self.processor = processor
        self.config = config
        self.batch_size = batch_size
        self.label_names = label_names_from_config(config)
        self.multi_label = is_multi_label(config)
        if len(self.label_names) < (1 if self.multi_label else 2):
            raise ValueError("MMFusionPredictor classifies; this checkpoint has fewer than two classes (regression?).")
        if threshold is None:
            threshold = getattr(config, "decision_threshold", None)
        self.threshold = check_decision_threshold(threshold, len(self.label_names), multi_label=self.multi_label)
        self.temperature = check_temperature(
            getattr(config, "calibration_temperature", 1.0) if temperature is None else temperature
        )
        self.memory = memory
        self.prediction_mode = getattr(config, "prediction_mode", "head")
        if self.prediction_mode != "head" and memory is None:
            raise ValueError(
                f"This checkpoint predicts with prediction_mode={self.prediction_mode!r}, which reads its labelled "
                "memory (memory.safetensors, memory.json), and the memory files are missing."
            )

    def _threshold(self, threshold):
        """The call's threshold (checked) or the predictor's."""
        if threshold is None:
            return self.threshold
        return check_decision_threshold(threshold, len(self.label_names), multi_label=self.multi_label)

    @classmethod
    def from_pretrained(
        cls,
        path_or_hub_id: str | os.PathLike,
        backend: str = "torch",
        device: str | None = None,
        batch_size: int = 32,
        *,
        onnx_file: str = ONNX_FILENAME,
        providers: Sequence[str] | None = None,
        session_options=None,
        threshold=None,
        temperature=None,
        **model_kwargs,
    ) -> MMFusionPredictor:
        r"""
        Load a predictor from a checkpoint folder or Hub id (`backend="torch"`) or an export folder (`"onnx"`).

        Args:
            path_or_hub_id (`str` or `os.PathLike`):
                `backend="torch"`: a checkpoint saved with `save_pretrained` (weights, config, processor files), local
                or on the Hub. `backend="onnx"`: a folder written by `mmfusion-export` (local or on the Hub).
            backend (`str`, *optional*, defaults to `"torch"`):
                `"torch"` or `"onnx"` (ONNX Runtime).
            device (`str`, *optional*):
                `"cpu"`, `"cuda"`, ... Default: CUDA when available, else CPU.
            batch_size (`int`, *optional*, defaults to 32):
                Pairs per model call.
            onnx_file (`str`, *optional*, defaults to `"model.onnx"`):
                Which graph of the export folder to run; `"model_int8.onnx"` for the int8-quantized one.
            providers, session_options:
                Passed to `onnxruntime.InferenceSession` (`backend="onnx"` only).
            threshold, temperature:
                Override the checkpoint's decision threshold and temperature (see the class docstring).
            model_kwargs:
                Passed to `AutoModelForSequenceClassification.from_pretrained` (`backend="torch"` only), e.g.
                `revision=`, `dtype=`.
        """
        from transformers import AutoConfig, AutoProcessor

        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        check_checkpoint(path_or_hub_id, needs_weights=backend == "torch")  # names the broken file, if any
        if backend == "torch":
            engine = TorchBackend.from_pretrained(path_or_hub_id, device=device, **model_kwargs)
            config, source = engine.config, os.fspath(path_or_hub_id)
            memory = getattr(engine.model, "memory", None)  # loaded (and its fingerprint checked) with the model
        else:
            folder = resolve_model_folder(path_or_hub_id)
            engine = OnnxBackend(
                folder / onnx_file, device=device, providers=providers, session_options=session_options
            )
            config, source = AutoConfig.from_pretrained(folder, trust_remote_code=True), folder
            memory = export_memory(folder)
            warn_if_int8_made_for_another_cpu(folder / EXPORT_INFO_FILENAME, onnx_file)
        processor = AutoProcessor.from_pretrained(source, trust_remote_code=True)
        return cls(
            engine,
            processor,
            config,
            batch_size=batch_size,
            threshold=threshold,
            temperature=temperature,
            memory=memory,
        )

    # ------------------------------------------------------------------------------------------------ pairs

    def predict(
        self, image: ImageInput, text: str | None, *, threshold=None, neighbors: int | None = None
    ) -> dict[str, Any]:
        """Classify one pair.

        Args:
            image: a PIL image (any mode), an image file path, encoded bytes or a uint8 array.
            text (`str`): the caption; `""` (or `None`) for none.
            threshold (`float` or `list[float]`, *optional*): the decision threshold for this call (default: the
                predictor's, i.e. the checkpoint's).
            neighbors (`int`, *optional*): also return the pair's `neighbors` nearest labelled examples of the
                checkpoint's memory, best first: `"neighbors": [{"id", "label", "similarity", "caption", "image"}]`.

        Returns:
            `{"label": name, "label_id": int, "probabilities": {name: probability}}`; multi-label checkpoints:
            `{"labels": [names], "label_ids": [ids], "probabilities": {name: probability}}`, the labels at or above
            their thresholds by decreasing probability (empty when none is). With `neighbors`, also `"neighbors"`.

        Raises:
            `ImageCheckError`: the image file is missing, unreadable or too large (the message names it).
        """
        return self.predict_batch([image], [text], threshold=threshold, neighbors=neighbors)[0]

    def predict_batch(
        self, images: Sequence[ImageInput], texts: Sequence[str | None], *, threshold=None, neighbors=None
    ) -> list[dict[str, Any]]:
        """Classify pairs `(images[i], texts[i])`, `batch_size` at a time; one record (see `predict`) per pair."""
        threshold = self._threshold(threshold)
        probabilities, found = self._predict_pairs(images, texts, neighbors=neighbors)
        records = [prediction_record(row, self.label_names, threshold, self.multi_label) for row in probabilities]
        for record, nearest in zip(records, found or ()):
            record["neighbors"] = nearest
        return records

    def _predict_pairs(self, images, texts, *, neighbors=None, progress: bool = False):
        """Probabilities, and with `neighbors` each pair's nearest labelled examples (else None)."""
        if len(images) != len(texts):
            raise ValueError(f"Got {len(images)} images but {len(texts)} captions; pass one caption per image.")
        batches = (
            (images[start : start + self.batch_size], texts[start : start + self.batch_size])
            for start in range(0, len(images), self.batch_size)
        )
        return self._run_with_neighbors(batches, len(images), neighbors, progress=progress, description="Predicting")

    def _run_with_neighbors(self, batches, total: int, neighbors, *, progress: bool, description: str):
        self._check_neighbors(neighbors)
        probabilities, embeddings = self._run(
            batches, total, progress=progress, description=description, embeddings=bool(neighbors)
        )
        found = self.memory.neighbors(embeddings, int(neighbors)) if neighbors else None
        return probabilities, found

    def _check_neighbors(self, neighbors) -> None:
        if not neighbors:
            return
        if isinstance(neighbors, bool) or int(neighbors) != neighbors or neighbors < 1:
            raise ValueError(f"neighbors must be a whole number >= 1; got {neighbors!r}.")
        if self.memory is None:
            raise ValueError(
                "neighbors: this checkpoint has no labelled memory (memory.safetensors); add one with "
                "mmfusion-memory add CHECKPOINT --input DATA."
            )

    def predict_probabilities(
        self, images: Sequence[ImageInput], texts: Sequence[str | None], *, progress: bool = False
    ) -> np.ndarray:
        """`(len(images), num_labels)` class probabilities for the pairs, computed `batch_size` at a time."""
        return self._predict_pairs(images, texts, progress=progress)[0]

    def _run(
        self,
        batches: Iterable[tuple[Sequence, Sequence]],
        total: int,
        *,
        progress: bool,
        description: str,
        embeddings: bool = False,
    ):
        """Probabilities for `(images, texts)` batches: images decoded and preprocessed in threads, ahead of the model.

        Preparing a batch (decoding its images, resizing, normalising, tokenizing) is done by the image thread pool
        (`mmfusion.parallel`; PIL and numpy release the GIL), a few batches ahead, while the model runs the current
        one. When there is a single batch, its images are decoded in parallel instead.

        Returns `(probabilities, embeddings)`; the embeddings (L2-normalised) only when asked for, else None.
        """
        chunks, vectors = [], []
        with (
            tqdm(total=total, unit=" images", disable=not progress, desc=description, smoothing=0.1) as bar,
            image_thread_pool() as pool,
        ):
            for inputs, count in _prefetched(pool, batches, self._prepare_batch, ahead=usable_cpu_count() + 1):
                probabilities, batch_vectors = self._probabilities(inputs, embeddings)
                chunks.append(probabilities)
                vectors.append(batch_vectors)
                bar.update(count)
        if not chunks:
            return np.zeros((0, len(self.label_names))), (np.zeros((0, 0), np.float32) if embeddings else None)
        return np.concatenate(chunks), (np.concatenate(vectors) if embeddings else None)

    def _prepare_batch(self, images: Sequence, texts: Sequence[str | None], pool=None):
        """Processor outputs for one batch, and its size. `pool`: decode the images in parallel.

        The text-only baseline reads no image: its images may be None (they are not even opened)."""
        fusion = FUSIONS.get(getattr(self.config, "fusion", None))
        needs_image = (
            fusion is None or fusion.needs_image or "pixel_values" in getattr(self.backend, "input_names", ())
        )
        pil_images = None
        if needs_image:
            pil_images = list(pool.map(load_image, images)) if pool is not None else [load_image(i) for i in images]
        captions = ["" if text is None else str(text) for text in texts]
        inputs = self.processor(images=pil_images, text=captions, return_tensors=self.backend.return_tensors)
        return inputs, len(captions)

    def _probabilities(self, inputs, embeddings: bool = False):
        """A batch's probabilities (the config's prediction mode applied) and, when asked for, its embeddings."""
        if self.prediction_mode == "head" and not embeddings:
            return config_probabilities(self.backend.logits(inputs), self.config, temperature=self.temperature), None
        logits, vectors = self.backend.logits_and_embeddings(inputs)
        scores = self.memory.knn_scores(vectors, self.config.knn_k) if self.prediction_mode != "head" else None
        probabilities = config_probabilities(logits, self.config, temperature=self.temperature, knn_scores=scores)
        return probabilities, vectors

    # ------------------------------------------------------------------------------------------------ explanations

    def explain(self, image: ImageInput, text: str | None, *, target=None, threshold=None, steps: int | None = None):
        """Explain one pair's decision: caption-token attributions (Integrated Gradients on the word embeddings) and
        an image heat map (Grad-CAM on the vision tower's last feature map); see `mmfusion.explanations`.

        Args:
            image, text: as for `predict`.
            target (`int` or `str`, *optional*): the class to explain (id or name); default: the decided one.
            threshold: the decision threshold deciding that class (default: the predictor's).
            steps (`int`, *optional*): Integrated Gradients path points (default 64; more: smaller `text_delta`).

        Returns:
            `mmfusion.explanations.Explanation`: `label`, `score`, `words` / `word_attributions`, `heatmap` (the
            feature grid, in [0, 1]; `heatmap_image(width, height)` upsamples it), ... PyTorch backend only.
        """
        targets = None if target is None else [target]
        return self.explain_batch([image], [text], targets=targets, threshold=threshold, steps=steps)[0]

    def explain_batch(
        self, images: Sequence[ImageInput], texts: Sequence[str | None], *, targets=None, threshold=None, steps=None
    ) -> list:
        """`explain` for pairs `(images[i], texts[i])`, `batch_size` pairs per model call; one `Explanation` each."""
        from ..explanations import DEFAULT_STEPS, explain_pairs

        model = getattr(self.backend, "model", None)
        if model is None:
            source = getattr(self.backend, "model_path", None)
            raise ValueError(
                "Explanations need gradients, which an ONNX graph does not give"
                + (f" ({source})" if source is not None else f" ({type(self.backend).__name__})")
                + ": explain with the PyTorch checkpoint the export was made from, "
                "MMFusionPredictor.from_pretrained(CHECKPOINT) (backend='torch')."
            )
        if len(images) != len(texts):
            raise ValueError(f"Got {len(images)} images but {len(texts)} captions; pass one caption per image.")
        if targets is None:
            probabilities = self.predict_probabilities(images, texts)
            targets = [int(i) for i in np.atleast_1d(decide(probabilities, self._threshold(threshold)))]
        else:
            targets = [self._class_id(target) for target in targets]
        fusion = FUSIONS.get(getattr(self.config, "fusion", None))
        loaded = [load_image(image) if fusion is None or fusion.needs_image else None for image in images]
        explanations = []
        for start in range(0, len(images), self.batch_size):
            end = start + self.batch_size
            explanations += explain_pairs(
                model,
                self.processor,
                loaded[start:end],
                list(texts[start:end]),
                targets=targets[start:end],
                temperature=self.temperature,
                steps=steps or DEFAULT_STEPS,
            )
        return explanations

    def _class_id(self, target) -> int:
        if isinstance(target, str):
            if target not in self.label_names:
                raise ValueError(f"Unknown class {target!r}; the classes are {self.label_names}.")
            return self.label_names.index(target)
        if not 0 <= int(target) < len(self.label_names):
            raise ValueError(f"Class id {target} out of range for {len(self.label_names)} classes.")
        return int(target)

    # ------------------------------------------------------------------------------------------------ files

    def predict_file(
        self,
        source,
        split: str | None = None,
        on_bad_rows: str = LoaderArguments.on_bad_rows,
        *,
        report_path: str | os.PathLike | None = None,
        progress: bool = True,
        threshold=None,
        neighbors: int | None = None,
        **load_options,
    ) -> Predictions:
        r"""
        Predict every row of one split of a dataset, in file order.

        The input is loaded with `mmfusion.data.load_image_text_dataset`, so every format it reads works here and
        bad rows follow its rules.

        Args:
            source:
                A Hateful-Memes-layout folder, a `.jsonl`/`.csv`/`.tsv` file, `"demo"`, or a `datasets`
                `Dataset`/`DatasetDict` (see `load_image_text_dataset`).
            split (`str`, *optional*):
                The split to predict (`"test_unseen"`, `"test"`, ...). Required when the source has several.
            on_bad_rows (`str`, *optional*, defaults to `"error"`):
                `"error"`: a bad row (missing or unreadable image, malformed line, ...) raises `BadRowError` naming
                its file, line and id. `"skip"`: bad rows are left out and listed in the load report
                (`Predictions.report`, and `report_path` when given).
            report_path (`str`, *optional*):
                Where to also write the load report as JSON.
            progress (`bool`, *optional*, defaults to `True`):
                Show a tqdm progress bar.
            threshold (`float` or `list[float]`, *optional*):
                The decision threshold for this call (default: the predictor's).
            neighbors (`int`, *optional*):
                Also find each row's nearest labelled examples (`Predictions.neighbors`, in each record).
            load_options:
                Passed to `load_image_text_dataset`: the fields of `mmfusion.data.LoaderArguments` (`image_column`,
                `text_column`, `id_column`, `class_names`, `encoding`, `max_image_pixels`, `cache_dir`, ...), e.g.
                `**LoaderArguments(image_column="img").as_loader_kwargs()`, as `mmfusion-predict` passes them.

        Returns:
            `Predictions`: ids, probabilities and predicted labels; `.to_csv(path)` writes the challenge format.
        """
        from ..data import detect_kind, load_image_text_dataset

        if detect_kind(source) == "files" and load_options.get("class_names") is None:
            # string labels (or none at all, for an unlabeled file) are read in the model's own class order
            load_options["class_names"] = list(self.label_names)
        with main_process_first(launcher_state()):  # under a launcher, one process fills the datasets cache
            dataset_dict, report = load_image_text_dataset(
                source, on_bad_rows=on_bad_rows, return_report=True, **load_options
            )
        if report_path is not None:  # saved here rather than by the loader: not every loader takes `report_path`
            report.save(report_path)
        split = choose_split(dataset_dict, split, source)
        predictions = self.predict_dataset(
            dataset_dict[split],
            progress=progress,
            description=f"Predicting {split}",
            threshold=threshold,
            neighbors=neighbors,
        )
        predictions.split, predictions.report = split, report
        return predictions

    def predict_dataset(
        self, dataset, *, progress: bool = True, description: str = "Predicting", threshold=None, neighbors=None
    ) -> Predictions:
        """Predict a `datasets.Dataset` with `id`, `image` and `text` columns (and optionally `label`).

        Images are read undecoded (file path or encoded bytes) and decoded by the predictor's threads. Under a
        launcher (`accelerate launch`, `torchrun`) each process predicts its share of whole batches and every process
        returns all rows, in input order (`mmfusion.inference.sharding`).
        """
        state = launcher_state()
        rows = range(len(dataset))
        if state is not None:
            rows = batch_aligned_shares(len(dataset), self.batch_size, state.num_processes)[state.process_index]
        undecoded = dataset.cast_column("image", datasets.Image(decode=False)).select(rows)
        batches = (
            ([encoded_image(image) for image in batch["image"]], batch["text"])
            for batch in undecoded.select_columns(["image", "text"]).iter(batch_size=self.batch_size)
        )
        probabilities, found = self._run_with_neighbors(
            batches, len(rows), neighbors, progress=progress, description=description
        )
        if state is not None:
            probabilities = gather_in_order(probabilities, state)
            if found is not None:  # every process returns all rows
                found = gather_rows_in_order(found, state)
        labels = None
        if "label" in dataset.column_names:  # multi-label: lists of class ids (None: unlabeled), made multi-hot
            labels = dataset["label"] if self.multi_label else np.asarray(dataset["label"])
        return Predictions(
            ids=[str(i) for i in dataset["id"]],
            probabilities=probabilities,
            label_names=list(self.label_names),
            true_labels=labels,
            threshold=self._threshold(threshold),
            multi_label=self.multi_label,
            neighbors=found,
        )

    def __repr__(self) -> str:
        engine = type(self.backend).__name__
        return (
            f"{type(self).__name__}(backend={engine}, labels={self.label_names}, batch_size={self.batch_size}, "
            f"threshold={self.threshold}, temperature={self.temperature:g})"
        )


def export_memory(folder):
    """An ONNX export folder's labelled memory (copied there by `mmfusion-export`), None without one. Its
    fingerprint must be the one the export recorded for the model it traced (`onnx_export.json`)."""
    import json
    from pathlib import Path

    from ..memory import LabelledMemory, MemoryMismatchError

    memory = LabelledMemory.load(folder)
    if memory is None:
        return None
    info_path = Path(folder) / EXPORT_INFO_FILENAME
    recorded = (
        json.loads(info_path.read_text(encoding="utf-8")).get("model_fingerprint") if info_path.is_file() else None
    )
    if recorded != memory.fingerprint:
        raise MemoryMismatchError(
            f"The memory in {folder} was built by another model (fingerprint {memory.fingerprint}; the exported model's "
            f"is {recorded}): export the checkpoint again, with its memory."
        )
    return memory


def encoded_image(item: dict) -> bytes | str:
    """What a `datasets.Image(decode=False)` cell holds, for `load_image`: its encoded bytes, else its file path."""
    return item["bytes"] if item.get("bytes") is not None else item["path"]


def _prefetched(pool: ThreadPoolExecutor, batches: Iterable[tuple], prepare: Callable, *, ahead: int) -> Iterator:
    """`prepare(*batch)` for every batch, in order, computed by `pool` up to `ahead` batches before they are used.

    A single batch is prepared in the calling thread with `pool` passed on (its images are decoded in parallel).
    """
    iterator = iter(batches)
    first, second = next(iterator, None), next(iterator, None)
    if first is None:
        return
    if second is None:
        yield prepare(*first, pool=pool)
        return
    pending: deque[Future] = deque(pool.submit(prepare, *batch) for batch in (first, second))
    for batch in iterator:
        if len(pending) >= ahead:
            yield pending.popleft().result()
        pending.append(pool.submit(prepare, *batch))
    while pending:
        yield pending.popleft().result()


def choose_split(dataset_dict, split: str | None, source) -> str:
    """The split to predict: `split` when given (checked), else the only split there is."""
    available = list(dataset_dict)
    if split is not None:
        if split not in dataset_dict:
            raise ValueError(f"{source} has no split {split!r}; available: {', '.join(available)}.")
        return split
    if len(available) == 1:
        return available[0]
    raise ValueError(f"{source} has several splits ({', '.join(available)}); choose one with split= (--split).")
