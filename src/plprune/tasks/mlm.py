"""Masked-language modelling on a block corpus (BERT on WikiText-2, or the offline pydoc corpus).

Perplexities are exp(token-weighted mean cross-entropy at masked positions) on a fixed, seeded masking
of fixed blocks: ``train_ppl`` on a seeded sample of training blocks (model in eval mode), ``test_ppl``
on the held-out split, ``delta_ppl = test_ppl - train_ppl`` (the paper's ΔPPL, Table 1).

Training batches are masked afresh per step (dynamic masking, the default) or, with ``static_masking``,
drawn from one fixed masking of every training block (:func:`plprune.data.mlm.static_masking`); then
``train_ppl`` is measured on that same fixed masking of its sample blocks (the training objective itself).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from plprune.data import MlmData, MlmMasker, fixed_masked_batches
from plprune.data.mlm import static_masking as mask_once
from plprune.devices import to_device
from plprune.errors import DataError
from plprune.seeding import generator
from plprune.tasks.sampling import EpochSampler
from plprune.train.metrics import perplexity
from plprune.validation import check_choice, check_positive_int

KERNEL_OUTPUTS = ("loss", "logit")


class MlmTask:
    """Batches, loss and evaluation for MLM; see the module docstring for the metrics."""

    def __init__(
        self, data: MlmData, batch_size: int, seed: int, eval_batches: int = 8, static_masking: bool = False
    ) -> None:
        self.name = "mlm"
        self.data = data
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.seed = seed
        self.eval_batches = check_positive_int("eval_batches", eval_batches)
        tokenizer = data.tokenizer
        self.masker = MlmMasker(
            vocab_size=tokenizer.vocab_size, mask_id=tokenizer.mask_id, special_ids=tokenizer.special_ids
        )
        n_train = data.train_blocks.shape[0]
        if n_train < self.batch_size:
            raise DataError(
                f"the training split has {n_train} blocks of {data.train_blocks.shape[1]} tokens, fewer than "
                f"one batch of {self.batch_size}; lower --batch-size or --seq-len, or use a larger corpus"
            )
        self.sampler = EpochSampler(n_train, self.batch_size, seed)
        self.steps_per_epoch = self.sampler.steps_per_epoch
        eval_blocks = self.eval_batches * self.batch_size
        train_sample = torch.randperm(n_train, generator=generator(seed, "train-eval-sample"))[:eval_blocks]
        self.static_masking = bool(static_masking)
        self._static: tuple[Tensor, Tensor] | None = None
        if self.static_masking:
            self._static = mask_once(data.train_blocks, self.masker, seed)
            self._train_eval = [
                (self._static[0][i], self._static[1][i]) for i in train_sample.split(self.batch_size)
            ]
        else:
            self._train_eval = fixed_masked_batches(
                data.train_blocks[train_sample], self.masker, self.batch_size, seed=seed + 1
            )
        self._test_eval = fixed_masked_batches(
            data.test_blocks, self.masker, self.batch_size, seed=seed + 2, max_blocks=eval_blocks
        )
        self._test_eval_full: list[tuple[Tensor, Tensor]] | None = None
        # batches are prepared on the CPU (seeded, the same on every device) and handed out here
        self.device = torch.device("cpu")

    def train_batch(self, step: int) -> tuple[Tensor, Tensor]:
        """Batch number ``step`` (0-based): epoch-wise seeded permutation, seeded MLM masking."""
        index = self.sampler.indices(step)
        if self._static is not None:
            batch = self._static[0][index], self._static[1][index]
        else:
            batch = self.masker(self.data.train_blocks[index], generator(self.seed, "mask", step))
        return to_device(batch, self.device)

    def loss(self, model: nn.Module, batch: tuple[Tensor, ...]) -> Tensor:
        input_ids, labels = batch
        return model(input_ids, labels).loss

    def loss_units(self, batch: tuple[Tensor, ...]) -> int:
        """How many terms ``loss`` averages: the masked tokens (data-parallel shards weight by it)."""
        return int((batch[1] != -100).sum())

    def per_sample_output(self, model: nn.Module, batch: tuple[Tensor, ...], kind: str = "loss") -> Tensor:
        """Per-sample masked-token loss (``kind="loss"``) or mean true-token logit (``"logit"``)."""
        input_ids, labels = batch
        check_choice("kernel output", kind, KERNEL_OUTPUTS)
        if kind == "logit":
            return model.per_sample_true_logit(input_ids, labels)
        return model.per_sample_loss(input_ids, labels)

    @torch.no_grad()
    def _mean_loss(self, model: nn.Module, batches: list[tuple[Tensor, Tensor]]) -> float:
        total, count = 0.0, 0
        for batch in batches:
            input_ids, labels = to_device(batch, self.device)
            n_masked = int((labels != -100).sum())
            output = model(input_ids, labels)
            # MoE models add a load-balancing term to .loss; perplexity is of the MLM loss alone
            mlm_loss = getattr(output, "mlm_loss", None)
            total += float(output.loss if mlm_loss is None else mlm_loss) * n_masked
            count += n_masked
        return total / max(count, 1)

    def evaluate(self, model: nn.Module, *, full: bool = False) -> dict[str, Any]:
        """``train_ppl``/``test_ppl``/``delta_ppl`` (``full``: the whole test split, for final figures)."""
        was_training = model.training
        model.eval()
        try:
            if full and self._test_eval_full is None:
                self._test_eval_full = fixed_masked_batches(
                    self.data.test_blocks, self.masker, self.batch_size, seed=self.seed + 2
                )
            test_batches = self._test_eval_full if full else self._test_eval
            train_loss = self._mean_loss(model, self._train_eval)
            test_loss = self._mean_loss(model, test_batches)
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
