"""Causal (next-token) language modelling on a block corpus (a Llama-style decoder on WikiText-2 or pydoc).

Batches: each epoch is a seeded permutation of the training blocks (``generator(seed, "epoch", e)``; the
last partial batch is dropped), so batch s depends only on (seed, s) and resume is exact. A batch is
``(input_ids, labels)``, labels the next tokens (-100 where nothing is predicted; see
:mod:`plprune.data.causal_lm`). The loss is the mean next-token cross-entropy over the batch's labelled
positions; the per-sample output of Sec. 3.2.2 is each block's mean token loss (``"loss"``) or mean
true-next-token logit (``"logit"``).

Evaluation (model in eval mode) reports perplexities exp(token-weighted mean cross-entropy):
``train_ppl`` on a fixed seeded sample of ``eval_batches`` batches of training blocks, ``test_ppl`` on the
first ``eval_batches`` batches of test blocks, or on every test block with ``full=True``;
``delta_ppl = test_ppl - train_ppl``. The keys are the masked-LM task's, so reports treat both alike.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from plprune.data.causal_lm import IGNORE_INDEX, CausalLmData
from plprune.devices import to_device
from plprune.errors import DataError, PlpruneError
from plprune.seeding import generator
from plprune.tasks.sampling import EpochSampler
from plprune.train.metrics import perplexity
from plprune.validation import check_choice, check_non_negative_int, check_positive_int

__all__ = ["KERNEL_OUTPUTS", "CausalLmTask"]

KERNEL_OUTPUTS = ("loss", "logit")


class CausalLmTask:
    """Batches, loss, per-sample output and evaluation for next-token prediction; see the module docstring.

    The model is called as ``model(input_ids, labels)`` (→ ``.loss``, ``.logits``),
    ``model.per_sample_loss(input_ids, labels)`` and ``model.per_sample_true_logit(input_ids, labels)``,
    as :class:`~plprune.models.hf_llama.HfLlamaForCausalLM` provides.
    """

    def __init__(self, data: CausalLmData, batch_size: int, seed: int, eval_batches: int = 8) -> None:
        if not isinstance(data, CausalLmData):
            raise PlpruneError(f"data must be a CausalLmData, got {type(data).__name__}")
        self.name = "causal-lm"
        self.data = data
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.seed = check_non_negative_int("seed", seed)
        self.eval_batches = check_positive_int("eval_batches", eval_batches)
        n_train = data.train_inputs.shape[0]
        if n_train < self.batch_size:
            raise DataError(
                f"the training split has {n_train} blocks of {data.seq_len} tokens, fewer than one batch of "
                f"{self.batch_size}; lower --batch-size or --seq-len, or use a larger corpus"
            )
        self.sampler = EpochSampler(n_train, self.batch_size, self.seed)
        self.steps_per_epoch = self.sampler.steps_per_epoch
        eval_blocks = self.eval_batches * self.batch_size
        sample = torch.randperm(n_train, generator=generator(self.seed, "train-eval-sample"))[:eval_blocks]
        self._train_eval = self._batches(data.train_inputs[sample], data.train_labels[sample])
        self._test_eval = self._batches(data.test_inputs[:eval_blocks], data.test_labels[:eval_blocks])
        self._test_eval_full = self._batches(data.test_inputs, data.test_labels)
        # batches are prepared on the CPU (seeded, the same on every device) and handed out here
        self.device = torch.device("cpu")

    def _batches(self, inputs: Tensor, labels: Tensor) -> list[tuple[Tensor, Tensor]]:
        return list(zip(inputs.split(self.batch_size), labels.split(self.batch_size), strict=True))

    def train_batch(self, step: int) -> tuple[Tensor, Tensor]:
        """Batch number ``step`` (0-based) of the epoch-wise seeded permutation: ``(input_ids, labels)``."""
        index = self.sampler.indices(step)
        return to_device((self.data.train_inputs[index], self.data.train_labels[index]), self.device)

    @staticmethod
    def _unpack(batch: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        if len(batch) != 2:
            raise PlpruneError(f"a causal-LM batch is (input_ids, labels), got {len(batch)} entries")
        return batch[0], batch[1]

    def loss(self, model: nn.Module, batch: tuple[Tensor, ...]) -> Tensor:
        """Mean next-token cross-entropy over the batch's labelled positions (the training loss L_S)."""
        input_ids, labels = self._unpack(batch)
        return model(input_ids, labels).loss

    def logits(self, model: nn.Module, batch: tuple[Tensor, ...]) -> Tensor:
        """``(B, T, V)`` next-token logits (e.g. for a Hessian of the summed logits)."""
        input_ids, _ = self._unpack(batch)
        return model(input_ids).logits

    def loss_units(self, batch: tuple[Tensor, ...]) -> int:
        """How many terms ``loss`` averages: the labelled tokens (data-parallel shards weight by it)."""
        return int((self._unpack(batch)[1] != IGNORE_INDEX).sum())

    def per_sample_output(self, model: nn.Module, batch: tuple[Tensor, ...], kind: str = "loss") -> Tensor:
        """``(B,)``: each block's mean token loss (``kind="loss"``) or mean true-next-token logit."""
        check_choice("kernel output", kind, KERNEL_OUTPUTS)
        input_ids, labels = self._unpack(batch)
        if kind == "logit":
            return model.per_sample_true_logit(input_ids, labels)
        return model.per_sample_loss(input_ids, labels)

    @torch.no_grad()
    def mean_token_loss(self, model: nn.Module, batches: list[tuple[Tensor, Tensor]]) -> float:
        """Token-weighted mean next-token cross-entropy (float64 sums) over ``batches``."""
        total, count = 0.0, 0
        for batch in batches:
            input_ids, labels = to_device(batch, self.device)
            logits = model(input_ids).logits
            flat, targets = logits.flatten(0, 1).double(), labels.flatten()
            total += float(F.cross_entropy(flat, targets, ignore_index=IGNORE_INDEX, reduction="sum"))
            count += int((labels != IGNORE_INDEX).sum())
        return total / max(count, 1)

    def evaluate(self, model: nn.Module, *, full: bool = False) -> dict[str, Any]:
        """``train_ppl``/``test_ppl``/``delta_ppl`` (``full``: every test block, for final figures)."""
        was_training = model.training
        model.eval()
        try:
            train_loss = self.mean_token_loss(model, self._train_eval)
            test_loss = self.mean_token_loss(model, self._test_eval_full if full else self._test_eval)
        finally:
            model.train(was_training)
        train_ppl, test_ppl = perplexity(train_loss), perplexity(test_loss)
        return {
            "train_eval_loss": train_loss,
            "test_loss": test_loss,
            "train_ppl": train_ppl,
            "test_ppl": test_ppl,
            "delta_ppl": test_ppl - train_ppl,
        }
