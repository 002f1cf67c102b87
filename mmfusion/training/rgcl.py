"""RGCL's training objective on the Trainer: retrieval-guided contrastive learning (Mei et al., ACL 2024,
github.com/JingbiaoMei/RGCL), `train.py --objective rgcl`.

What it does, as RGCL's `src/model/loss.py` and `src/utils/retrieval.py` do (triplet loss, one hard negative, one
pseudo-gold positive, cosine similarity, `hybrid_loss`):

- **The index.** At the start of every epoch (or every `rgcl_refresh_steps` optimizer steps) the model, in eval mode
  and without gradients, embeds the whole training split: `g = MMFusionForClassification.embed(...)`, the classifier's
  input L2-normalised. These vectors, with their labels, go into a `mmfusion.retrieval.VectorIndex` (exact inner
  product: cosine similarity).
- **Mining** (`mine_pairs`). Each training example of a batch searches the index with its current embedding (the
  batch's, detached: RGCL queries with the live features) for its k + 1 nearest; its own entry is dropped by dataset
  position (never by similarity: an exact duplicate of it is a neighbour like any other), the first k remain. The first
  of another class is its **hard negative**, the first of its own class its **pseudo-gold positive**. For more than
  two classes "another class" is any other class.
- **Loss** (`rgcl_loss`). Per example `ReLU(mean cos(g, in-batch examples of another class) + cos(g, hard negative)
  - cos(g, pseudo-gold) + margin)`, averaged; the total is `w * that + (1 - w) * the classification loss`
  (`rgcl_loss_weight`, RGCL's `ce_weight` 0.5). The mined neighbours enter as their **stored** (index-time) vectors,
  fixed targets without gradient: RGCL copies `train_feats[I[i, j]]` (computed at the epoch's start, detached) into
  its hard-negative and pseudo-gold tensors. The in-batch term uses the batch's own embeddings on both sides, with
  gradient, as RGCL's similarity matrix does.
- **Missing neighbours.** A term with no example behind it (no hard negative among the k, no pseudo-gold, no in-batch
  example of another class) counts 0, which is what RGCL's zero-filled feature tensors give; an example with none of
  the three (its loss would be the constant margin, no gradient) is left out of the average.

Under several processes (DDP) each process embeds the whole training split itself, so every rank mines from the full
index, never from its shard; the in-batch term is over the rank's own micro-batch. Batches carry each example's
position in the training split (`DATASET_INDEX`, added to the training dataset here and passed through by the
collator; keep `remove_unused_columns` false, train.py's default).

The embedding is RGCL's: for the fusions whose representation ends in a ReLU (`Fusion.ends_in_relu`) the layer before
it (`MMFusionModelOutput.retrieval_embeds`; RGCL's `mlp[:-2]`), else the classifier's input. On the ReLU's output
(non-negative, so no two examples' cosine goes below 0) this loss shrank align's vectors to a norm of 0.02 and the
classification term stopped learning (majority class on the benchmark's tweets); before the ReLU it does not.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from transformers import TrainerCallback

from ..retrieval import VectorIndex
from .columns import DATASET_INDEX
from .trainer import MMFusionTrainer

logger = logging.getLogger(__name__)

MISSING = -1  # no such neighbour


def mine_pairs(
    index: VectorIndex,
    index_labels: np.ndarray,
    queries: np.ndarray | torch.Tensor,
    query_labels: np.ndarray,
    query_positions: np.ndarray,
    k: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Each query's hard negative and pseudo-gold positive, as positions in the index (`MISSING` where none).

    `index` holds the training split's L2-normalised embeddings, `index_labels` their classes; query `i` is training
    example `query_positions[i]` with class `query_labels[i]`. The `k + 1` nearest are searched and the query's own
    position dropped (whatever its similarity: duplicates of it stay), leaving the `k` nearest others; among them
    the first of another class is the hard negative, the first of the same class the pseudo-gold positive.
    """
    _, found = index.search(queries, k + 1)
    query_positions = np.asarray(query_positions).reshape(-1, 1)
    kept = (found >= 0) & (found != query_positions)
    kept &= np.cumsum(kept, axis=1) <= k  # the k nearest others
    neighbour_labels = np.asarray(index_labels)[np.where(found >= 0, found, 0)]
    same = neighbour_labels == np.asarray(query_labels).reshape(-1, 1)
    return _first(found, kept & ~same), _first(found, kept & same)


def _first(found: np.ndarray, mask: np.ndarray) -> np.ndarray:
    first = mask.argmax(axis=1)
    return np.where(mask.any(axis=1), found[np.arange(len(found)), first], MISSING)


def rgcl_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    hard_negatives: torch.Tensor,
    has_hard_negative: torch.Tensor,
    pseudo_golds: torch.Tensor,
    has_pseudo_gold: torch.Tensor,
    margin: float,
) -> torch.Tensor:
    """RGCL's triplet loss of a batch (see the module's docstring).

    embeddings: `(B, D)`, the batch's (normalised here); labels: `(B,)` class ids; hard_negatives / pseudo_golds:
    `(B, D)` the mined neighbours' stored, L2-normalised vectors (anything where `has_*` is False).
    """
    g = F.normalize(embeddings.float(), dim=-1)
    other = labels.view(-1, 1) != labels.view(1, -1)  # (B, B); the diagonal is False
    other_count = other.sum(dim=1)
    in_batch = ((g @ g.T) * other).sum(dim=1) / other_count.clamp(min=1)
    hard = (g * hard_negatives.to(g)).sum(dim=1) * has_hard_negative
    gold = (g * pseudo_golds.to(g)).sum(dim=1) * has_pseudo_gold
    per_example = torch.relu(in_batch + hard - gold + margin)
    counted = (other_count > 0) | has_hard_negative | has_pseudo_gold
    if not counted.any():
        return g.sum() * 0.0  # keeps the graph (DDP expects every parameter's gradient)
    return per_example[counted].mean()


@torch.no_grad()
def embed_dataset(model, dataset, collator, batch_size: int, device) -> torch.Tensor:
    """`model.embed` of every example of a prepared dataset, in order, in eval mode: `(len(dataset), D)` float32."""
    was_training = model.training
    model.eval()
    chunks = []
    try:
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collator):
            batch.pop(DATASET_INDEX, None)
            batch.pop("labels", None)
            chunks.append(model.embed(**{key: value.to(device) for key, value in batch.items()}).float())
    finally:
        model.train(was_training)
    return torch.cat(chunks)


class TrainingIndex:
    """The training split's stored embeddings (`vectors`, on the training device), their classes and the
    `VectorIndex` over them."""

    def __init__(self, vectors: torch.Tensor, labels: np.ndarray):
        self.vectors = vectors
        self.labels = labels
        self.index = VectorIndex(vectors)


class _RebuildAtEpochStart(TrainerCallback):
    def __init__(self, trainer: RGCLTrainer):
        self.trainer = trainer

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.trainer.index_due = True


class RGCLTrainer(MMFusionTrainer):
    """`MMFusionTrainer` training with RGCL's objective (settings from the model's config: `rgcl_k`, `rgcl_margin`,
    `rgcl_loss_weight`, `rgcl_refresh_steps`). Evaluation and prediction are the usual ones.

    Logs `rgcl_loss` and `ce_loss` (the two terms, averaged since the last log) beside `loss`; under several
    processes they are the logging process's own batches' (`loss` is averaged over the processes).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.model.config.validate_objective()  # refuses multi-label and regression, naming why
        self.train_labels = None
        if self.train_dataset is not None:
            labels = np.asarray(self.train_dataset["label"])
            if labels.ndim != 1 or (labels < 0).any():
                raise ValueError(
                    "objective='rgcl' needs a class id for every training row (single-label, no unlabeled rows)."
                )
            self.train_labels = labels
            if DATASET_INDEX not in self.train_dataset.column_names:
                self.train_dataset = self.train_dataset.add_column(DATASET_INDEX, np.arange(len(labels)))
        self.training_index: TrainingIndex | None = None
        self.index_due = True
        self.index_step = 0
        self._terms: dict[str, list[torch.Tensor]] = {"rgcl_loss": [], "ce_loss": []}
        self.add_callback(_RebuildAtEpochStart(self))

    def rebuild_index(self) -> None:
        """Embed the whole training split with the current model (eval mode, no gradient) and index it."""
        started = time.perf_counter()
        vectors = embed_dataset(
            self.model, self.train_dataset, self.data_collator, self.args.per_device_eval_batch_size, self.args.device
        )
        self.training_index = TrainingIndex(vectors, self.train_labels)
        self.index_due, self.index_step = False, self.state.global_step
        logger.info(
            "RGCL: indexed %d training embeddings at step %d in %.2f s",
            len(vectors),
            self.state.global_step,
            time.perf_counter() - started,
        )

    def _index_is_due(self) -> bool:
        every = self.model.config.rgcl_refresh_steps
        if self.training_index is None:
            return True
        if every is None:
            return self.index_due
        return self.state.global_step - self.index_step >= every

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        positions = inputs.pop(DATASET_INDEX, None)
        if not model.training:  # evaluation: the usual loss
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if positions is None:
            raise ValueError(
                f"objective='rgcl': the training batch has no `{DATASET_INDEX}` (each example's position in the "
                "training split, which finds its mined neighbours). Keep --remove_unused_columns false."
            )
        if "labels" not in inputs:
            raise ValueError("objective='rgcl' needs labelled training batches.")
        if self._index_is_due():
            self.rebuild_index()
        config = self.model.config
        outputs = model(**inputs)
        labels = inputs["labels"]
        positions = positions.cpu().numpy()
        if not np.array_equal(self.train_labels[positions], labels.cpu().numpy()):
            raise ValueError(f"objective='rgcl': the batch's `{DATASET_INDEX}` does not match the training split.")
        index = self.training_index
        queries = F.normalize(outputs.embeddings.detach().float(), dim=-1)
        hard, gold = mine_pairs(index.index, index.labels, queries, labels.cpu().numpy(), positions, config.rgcl_k)
        device = outputs.embeddings.device
        hard, gold = torch.from_numpy(hard).to(device), torch.from_numpy(gold).to(device)
        contrastive = rgcl_loss(
            outputs.embeddings,
            labels,
            index.vectors[hard.clamp(min=0)].to(device),
            hard != MISSING,
            index.vectors[gold.clamp(min=0)].to(device),
            gold != MISSING,
            config.rgcl_margin,
        )
        weight = config.rgcl_loss_weight
        loss = weight * contrastive + (1.0 - weight) * outputs.loss
        self._terms["rgcl_loss"].append(contrastive.detach())  # read at the next log (no sync per step)
        self._terms["ce_loss"].append(outputs.loss.detach())
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log: the two terms' means since the last one
            for name, values in self._terms.items():
                if values:
                    logs[name] = round(torch.stack(values).mean().item(), 6)
                    values.clear()
        super().log(logs, start_time)


__all__ = ["MISSING", "RGCLTrainer", "TrainingIndex", "embed_dataset", "mine_pairs", "rgcl_loss"]
