"""Multi-exit networks: inference that stops early for easy inputs (BranchyNet; PABEE).

A multi-exit network has a classifier ("exit") after several of its blocks; at inference a sample leaves
at the first exit whose prediction is trusted, so easy samples skip the later blocks.

* **BranchyNet** (Teerapittayanon, McDanel & Kung, ICPR 2016): :class:`MultiExitCNN`, a small VGG-like
  1-D CNN (for MNIST-1D ``(N, 1, 40)``) with an exit (global average pool → linear) after every block,
  trained with :func:`branchynet_loss` (``Σ_i w_i CE_i``). A sample exits at the first exit whose
  :func:`normalized_entropy` is below a threshold (:func:`entropy_exit` on all exits' logits;
  :meth:`MultiExitCNN.infer_early_exit` runs the blocks one by one and stops computing for samples that
  have exited, counting the multiply-accumulates each sample actually paid for).
* **PABEE**, patience-based early exit (Zhou et al., NeurIPS 2020, "BERT Loses Patience"):
  :class:`MultiExitBertClassifier`, a BERT encoder (plprune's
  :class:`~plprune.models.bert.TransformerLayer`) with a classifier after every layer, trained with
  :func:`pabee_loss` (``Σ_j j·L_j / Σ_j j``). A sample exits once ``patience`` consecutive layers agree
  with the previous layer's prediction (:func:`patience_exit`; :meth:`MultiExitBertClassifier.infer_patience`
  runs layer by layer).

MAC counts (multiply-accumulates per sample) are analytical and cover convolutions, linear layers and the
two attention matmuls; normalisation, activations, pooling, softmax and embedding look-ups are not
counted. Early-exit inference needs ``model.eval()``: in training mode BatchNorm statistics of the
shrinking batch and dropout would make the result differ from the full forward pass.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from plprune.errors import PlpruneError
from plprune.models.bert import BertConfig, TransformerLayer, init_bert_weights
from plprune.models.filters import GatedConvBN, check_input_shape, global_average_pool
from plprune.models.layers import LayerNorm
from plprune.models.vgg import MaxPoolIfLarger
from plprune.validation import check_positive_int, check_probability

__all__ = [
    "EarlyExitResult",
    "MultiExitBertClassifier",
    "MultiExitCNN",
    "branchynet_loss",
    "entropy_exit",
    "normalized_entropy",
    "pabee_loss",
    "patience_exit",
]


@dataclass
class EarlyExitResult:
    """What early-exit inference decided for each of ``N`` samples.

    ``predictions`` ``(N,)`` int64: the argmax of the exit taken; ``exit_index`` ``(N,)`` int64: the
    0-based exit taken (CNN block / BERT layer); ``macs`` ``(N,)`` int64: multiply-accumulates the sample
    actually went through (every block and every exit head up to the one taken); ``logits`` ``(N, C)``:
    the logits of the exit taken.
    """

    predictions: Tensor
    exit_index: Tensor
    macs: Tensor
    logits: Tensor

    @property
    def exits_evaluated(self) -> Tensor:
        """Blocks (CNN) or encoder layers (BERT) each sample ran: ``exit_index + 1``."""
        return self.exit_index + 1


# -- shared checks ------------------------------------------------------------------------------------------
def _check_exit_logits(exit_logits: object, what: str = "exit_logits") -> list[Tensor]:
    """A non-empty list of float ``(N, C)`` tensors of one shape with ``C >= 2`` and no NaN."""
    if isinstance(exit_logits, Tensor) or not isinstance(exit_logits, Sequence) or not exit_logits:
        raise PlpruneError(
            f"{what} must be a non-empty list of (N, C) logit tensors, one per exit, got "
            f"{type(exit_logits).__name__}"
        )
    logits = list(exit_logits)
    for i, z in enumerate(logits):
        if not isinstance(z, Tensor) or z.dim() != 2 or not z.dtype.is_floating_point:
            shape = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
            raise PlpruneError(f"{what}[{i}] must be a float tensor (N, C), got {shape}")
        if z.shape != logits[0].shape:
            raise PlpruneError(
                f"every exit's logits must have the same shape (N, C); {what}[0] has "
                f"{tuple(logits[0].shape)}, {what}[{i}] has {tuple(z.shape)}"
            )
    if logits[0].shape[1] < 2:
        raise PlpruneError(f"logits need at least 2 classes, got {logits[0].shape[1]}")
    return logits


def _check_target(target: object, n: int, classes: int) -> Tensor:
    if not isinstance(target, Tensor) or target.dim() != 1 or target.dtype != torch.long:
        raise PlpruneError(
            f"target must be an int64 tensor (N,) of class indices, got "
            f"{tuple(target.shape) if isinstance(target, Tensor) else type(target).__name__}"
        )
    if target.shape[0] != n:
        raise PlpruneError(f"target has {target.shape[0]} labels but the logits have {n} samples")
    if n and bool(((target < 0) | (target >= classes)).any()):
        raise PlpruneError(
            f"target labels must lie in [0, {classes}), got min {int(target.min())}, max {int(target.max())}"
        )
    return target


def _check_threshold(threshold: object) -> float:
    return check_probability("threshold (normalised entropy)", threshold, inclusive_high=True)


def _check_patience(patience: object) -> int:
    return check_positive_int("patience (agreeing layers before exit)", patience)


def _check_eval(model: nn.Module, method: str) -> None:
    if model.training:
        raise PlpruneError(
            f"{method} needs the model in eval mode (BatchNorm batch statistics and dropout would make the "
            "early-exit results differ from the full forward pass); call model.eval() first"
        )


# -- BranchyNet ---------------------------------------------------------------------------------------------
def normalized_entropy(logits: Tensor) -> Tensor:
    """``H(softmax(logits)) / log C`` per row, in [0, 1]: 0 for a one-hot, exactly 1 for equal logits.

    ``logits`` ``(N, C)`` with ``C >= 2``; computed in float64 (returned as float64), ``-inf`` logits
    allowed (a class of probability 0 adds nothing), NaN refused.
    """
    if not isinstance(logits, Tensor) or logits.dim() != 2 or not logits.dtype.is_floating_point:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise PlpruneError(f"logits must be a float tensor (N, C), got {shape}")
    if logits.shape[1] < 2:
        raise PlpruneError(f"logits need at least 2 classes, got {logits.shape[1]}")
    if bool(torch.isnan(logits).any()):
        raise PlpruneError("logits contain NaN; normalised entropy is undefined")
    return _normalized_entropy(logits)


def _normalized_entropy(logits: Tensor) -> Tensor:
    """:func:`normalized_entropy` without the input checks (the inference loops call it per exit)."""
    z = logits.detach().double()
    entropy = torch.special.entr(torch.softmax(z, dim=-1)).sum(dim=-1).div_(math.log(z.shape[-1]))
    entropy = entropy.clamp_(0.0, 1.0)
    # equal logits: exactly uniform, so exactly 1 (the float sum of C terms 1/C·log C may miss it)
    return entropy.masked_fill_(z.amax(dim=-1) == z.amin(dim=-1), 1.0)


def entropy_exit(exit_logits: Sequence[Tensor], threshold: float) -> tuple[Tensor, Tensor]:
    """BranchyNet's exit rule on every exit's logits: ``(predictions, exit_index)``, both ``(N,)`` int64.

    Each sample leaves at the first exit whose :func:`normalized_entropy` is strictly below ``threshold``
    (the last exit otherwise) and is predicted by that exit's argmax. ``threshold`` lies in [0, 1]:
    0 never exits early; 1 exits at the first exit unless its logits are exactly equal.
    """
    logits = _check_exit_logits(exit_logits)
    threshold = _check_threshold(threshold)
    n = logits[0].shape[0]
    exit_index = torch.full((n,), len(logits) - 1, dtype=torch.long, device=logits[0].device)
    predictions = logits[-1].argmax(dim=-1)
    decided = torch.zeros(n, dtype=torch.bool, device=logits[0].device)
    for i, z in enumerate(logits[:-1]):
        leave = (normalized_entropy(z) < threshold) & ~decided
        exit_index[leave] = i
        predictions = torch.where(leave, z.argmax(dim=-1), predictions)
        decided |= leave
    return predictions, exit_index


def _check_weights(weights: object, count: int, what: str) -> list[float]:
    if weights is None:
        return [1.0] * count
    if isinstance(weights, Tensor):
        weights = weights.tolist()
    if not isinstance(weights, Sequence) or isinstance(weights, str):
        raise PlpruneError(f"{what} must be a sequence of {count} numbers, got {type(weights).__name__}")
    if len(weights) != count:
        raise PlpruneError(f"{what} has {len(weights)} entries but there are {count} exits; give one each")
    checked = []
    for i, w in enumerate(weights):
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise PlpruneError(f"{what}[{i}] must be a finite number >= 0, got {w!r}")
        checked.append(float(w))
    if sum(checked) <= 0:
        raise PlpruneError(f"{what} must not all be zero (at least one exit must be trained): {weights!r}")
    return checked


def branchynet_loss(
    exit_logits: Sequence[Tensor], target: Tensor, weights: Sequence[float] | None = None
) -> Tensor:
    """BranchyNet's joint loss ``Σ_i w_i · CE(exit_logits[i], target)`` (mean cross-entropy per exit).

    ``weights``: one finite non-negative number per exit, not all zero; default 1 for every exit.
    ``weights = [0, ..., 0, 1]`` trains only the final classifier (the single-exit reference).
    """
    logits = _check_exit_logits(exit_logits)
    target = _check_target(target, logits[0].shape[0], logits[0].shape[1])
    w = _check_weights(weights, len(logits), "weights")
    return sum(wi * F.cross_entropy(z, target) for wi, z in zip(w, logits, strict=True) if wi)


_ALL = object()  # _ExitBook.record: every running sample stays


class _ExitBook:
    """Bookkeeping of early-exit inference: which samples still run (their indices in the batch) and what
    the samples that left got. One host sync per exit (the number of leavers); no indexing while no sample
    or every sample leaves, and no scatter at the end when all left together (always so at batch 1)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.running: Tensor | None = None  # None: all n samples, in order
        self.parts: list[tuple[Tensor | None, Tensor, int, int, Tensor]] = []

    def record(self, leave: Tensor | None, logits: Tensor, predictions: Tensor, exit: int, macs: int) -> Any:
        """Record the running samples with ``leave`` True (``None``: all) as leaving at ``exit``.

        Returns ``None`` when no sample runs on, :data:`_ALL` when all of them do, else the boolean mask of
        the running samples that stay (the caller subsets its own state with it).
        """
        running = self.n if self.running is None else self.running.shape[0]
        count = running if leave is None else int(leave.sum())
        if count == 0:
            return _ALL
        if count == running:
            self.parts.append((self.running, predictions, exit, macs, logits))
            return None
        if self.running is None:
            self.running = torch.arange(self.n, device=predictions.device)
        self.parts.append((self.running[leave], predictions[leave], exit, macs, logits[leave]))
        stay = ~leave
        self.running = self.running[stay]
        return stay

    def result(self, classes: int, dtype: torch.dtype, device: torch.device) -> EarlyExitResult:
        if len(self.parts) == 1 and self.parts[0][0] is None:  # everyone left at the same exit
            _, predictions, exit, macs, logits = self.parts[0]
            full = torch.full((self.n,), exit, dtype=torch.long, device=device)
            return EarlyExitResult(predictions, full, torch.full_like(full, macs), logits)
        out = EarlyExitResult(
            torch.zeros(self.n, dtype=torch.long, device=device),
            torch.zeros(self.n, dtype=torch.long, device=device),
            torch.zeros(self.n, dtype=torch.long, device=device),
            torch.zeros(self.n, classes, dtype=dtype, device=device),
        )
        for index, predictions, exit, macs, logits in self.parts:
            out.predictions[index] = predictions
            out.exit_index[index] = exit
            out.macs[index] = macs
            out.logits[index] = logits
        return out


def _conv_out_length(conv: nn.Conv1d, length: int) -> int:
    (k,), (s,), (p,), (d,) = conv.kernel_size, conv.stride, conv.padding, conv.dilation
    return (length + 2 * p - d * (k - 1) - 1) // s + 1


class MultiExitCNN(nn.Module):
    """A VGG-like 1-D CNN with an exit classifier after every block (BranchyNet).

    Block ``b``: ``convs_per_block`` × (3-tap conv → BatchNorm → ReLU; plprune's
    :class:`~plprune.models.filters.GatedConvBN`) with ``widths[b]`` channels, then a 2× max-pool (skipped
    once the length is below 2, :class:`~plprune.models.vgg.MaxPoolIfLarger`). Exit ``b``: global average
    pool → ``nn.Linear(widths[b], num_classes)``; the last exit is the network's final classifier.
    For MNIST-1D (length 40) with 3 blocks the lengths go 40 → 20 → 10 → 5.
    """

    def __init__(
        self,
        widths: Sequence[int] = (32, 64, 128),
        in_channels: int = 1,
        num_classes: int = 10,
        convs_per_block: int = 2,
    ) -> None:
        super().__init__()
        if isinstance(widths, (str, bytes)) or not isinstance(widths, Sequence) or not widths:
            raise PlpruneError(f"widths must be a non-empty sequence of channel counts, got {widths!r}")
        self.widths = tuple(check_positive_int(f"widths[{i}]", w) for i, w in enumerate(widths))
        self.in_channels = check_positive_int("in_channels", in_channels)
        self.num_classes = check_positive_int("num_classes", num_classes)
        if num_classes < 2:
            raise PlpruneError(f"num_classes must be >= 2 (exits rank classes), got {num_classes}")
        self.convs_per_block = check_positive_int("convs_per_block", convs_per_block)
        blocks, heads, channels = [], [], in_channels
        for width in self.widths:
            convs = []
            for _ in range(convs_per_block):
                convs.append(GatedConvBN(channels, width, dims=1))
                channels = width
            blocks.append(nn.Sequential(*convs, MaxPoolIfLarger(1)))
            heads.append(nn.Linear(width, num_classes))
        self.blocks = nn.ModuleList(blocks)
        self.heads = nn.ModuleList(heads)

    @property
    def num_exits(self) -> int:
        return len(self.blocks)

    def _check_input(self, x: Tensor) -> None:
        check_input_shape(x, self.in_channels, 1, "MultiExitCNN")

    def forward(self, x: Tensor) -> list[Tensor]:
        """Every exit's logits, ``[(N, num_classes)] * num_exits``, first exit first."""
        self._check_input(x)
        out = []
        for block, head in zip(self.blocks, self.heads, strict=True):
            x = block(x)
            out.append(head(global_average_pool(x)))
        return out

    def final_exit(self, x: Tensor) -> Tensor:
        """The single-exit network: every block, then only the last exit head; ``(N, num_classes)``
        (``forward(x)[-1]`` without computing the other exits)."""
        self._check_input(x)
        for block in self.blocks:
            x = block(x)
        return self.heads[-1](global_average_pool(x))

    def block_macs(self, length: int) -> list[int]:
        """Conv MACs per sample of each block for inputs of ``length`` (BatchNorm, ReLU, pool not counted)."""
        length = check_positive_int("length", length)
        macs = []
        for block in self.blocks:
            total = 0
            for module in block:
                if isinstance(module, GatedConvBN):
                    conv = module.conv
                    length = _conv_out_length(conv, length)
                    if length < 1:
                        raise PlpruneError("the input is too short for the convolutions")
                    k = conv.kernel_size[0]
                    total += conv.out_channels * (conv.in_channels // conv.groups) * k * length
                elif isinstance(module, MaxPoolIfLarger) and length >= 2:
                    length //= 2
            macs.append(total)
        return macs

    def head_macs(self) -> list[int]:
        """Linear MACs per sample of each exit head (global average pooling not counted)."""
        return [head.in_features * head.out_features for head in self.heads]

    def exit_macs(self, length: int) -> list[int]:
        """MACs per sample of leaving at exit ``i``: blocks ``0..i`` and exit heads ``0..i`` (cumulative).

        The last entry is the cost of the full multi-exit forward pass.
        """
        out, total = [], 0
        for block, head in zip(self.block_macs(length), self.head_macs(), strict=True):
            total += block + head
            out.append(total)
        return out

    @torch.no_grad()
    def infer_early_exit(self, x: Tensor, threshold: float) -> EarlyExitResult:
        """Early-exit inference: block by block, only the samples that have not exited go on.

        After block ``i`` the samples still running are classified by exit ``i``; those whose normalised
        entropy is strictly below ``threshold`` (all of them at the last exit) leave with that exit's
        prediction and MAC count ``exit_macs(L)[i]``. Gives the same predictions and exits as
        :func:`entropy_exit` on ``forward(x)`` (up to float round-off in batched kernels). Needs eval mode.
        """
        _check_eval(self, "infer_early_exit")
        self._check_input(x)
        threshold = _check_threshold(threshold)
        cumulative = self.exit_macs(x.shape[2])
        n, dtype, device = x.shape[0], x.dtype, x.device
        book = _ExitBook(n)
        last = self.num_exits - 1
        for i, (block, head) in enumerate(zip(self.blocks, self.heads, strict=True)):
            x = block(x)
            logits = head(global_average_pool(x))
            leave = None if i == last else _normalized_entropy(logits) < threshold
            stay = book.record(leave, logits, logits.argmax(dim=-1), i, cumulative[i])
            if stay is None:
                break
            if stay is not _ALL:
                x = x[stay]
        return book.result(self.num_classes, dtype, device)


# -- PABEE --------------------------------------------------------------------------------------------------
def pabee_loss(layer_logits: Sequence[Tensor], target: Tensor) -> Tensor:
    """PABEE's training loss: ``Σ_j j · CE(layer_logits[j-1], target) / Σ_j j`` over layers ``j = 1..L``
    (deeper classifiers weigh more)."""
    logits = _check_exit_logits(layer_logits, "layer_logits")
    target = _check_target(target, logits[0].shape[0], logits[0].shape[1])
    total = sum(j * F.cross_entropy(z, target) for j, z in enumerate(logits, start=1))
    return total / (len(logits) * (len(logits) + 1) / 2)


def patience_exit(layer_logits: Sequence[Tensor], patience: int) -> tuple[Tensor, Tensor]:
    """PABEE's exit rule on every layer's logits: ``(predictions, exit_layer)``, both ``(N,)`` int64.

    Per sample, layers are read in order with a counter that goes up by one when layer ``j``'s argmax
    equals layer ``j-1``'s and back to 0 otherwise; the sample exits at the first layer where the counter
    reaches ``patience`` (0-based ``exit_layer``, at the earliest ``patience``), else at the last layer, and
    is predicted by that layer's argmax. ``patience`` is an int >= 1; ``patience >= L`` never exits early.
    """
    logits = _check_exit_logits(layer_logits, "layer_logits")
    patience = _check_patience(patience)
    preds = torch.stack([z.argmax(dim=-1) for z in logits])  # (L, N)
    n, device = preds.shape[1], preds.device
    exit_layer = torch.full((n,), len(logits) - 1, dtype=torch.long, device=device)
    counter = torch.zeros(n, dtype=torch.long, device=device)
    decided = torch.zeros(n, dtype=torch.bool, device=device)
    for j in range(1, len(logits)):
        counter = torch.where(preds[j] == preds[j - 1], counter + 1, torch.zeros_like(counter))
        leave = (counter >= patience) & ~decided
        exit_layer[leave] = j
        decided |= leave
    return preds.gather(0, exit_layer[None]).squeeze(0), exit_layer


class MultiExitBertClassifier(nn.Module):
    """A BERT encoder with a classifier after every layer (PABEE).

    Embeddings (token + position → LayerNorm → dropout) and ``config.num_layers`` encoder layers as in
    :class:`~plprune.models.bert.BertForMaskedLM` (the same :class:`~plprune.models.bert.TransformerLayer`).
    After layer ``j`` the first token's hidden state (put a ``[CLS]`` token there) goes through the shared
    BERT pooler (``tanh(W h + b)``, shared by all layers as in PABEE's reference implementation), dropout,
    and classifier ``j`` (``nn.Linear(hidden, num_classes)``). With ``pre_layer_norm`` a shared final
    LayerNorm is applied before pooling at every layer.
    """

    def __init__(self, config: BertConfig, num_classes: int = 2) -> None:
        super().__init__()
        if not isinstance(config, BertConfig):
            raise PlpruneError(f"config must be a plprune BertConfig, got {type(config).__name__}")
        self.num_classes = check_positive_int("num_classes", num_classes)
        if num_classes < 2:
            raise PlpruneError(f"num_classes must be >= 2, got {num_classes}")
        self.config = config
        hidden = config.hidden_size
        self.token_embedding = nn.Embedding(config.vocab_size, hidden)
        self.position_embedding = nn.Embedding(config.max_length, hidden)
        self.embedding_norm = LayerNorm(hidden, eps=config.layer_norm_eps)
        self.embedding_dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(TransformerLayer(config) for _ in range(config.num_layers))
        self.final_norm = LayerNorm(hidden, eps=config.layer_norm_eps) if config.pre_layer_norm else None
        self.pooler = nn.Linear(hidden, hidden)
        self.classifier_dropout = nn.Dropout(config.dropout)
        self.classifiers = nn.ModuleList(nn.Linear(hidden, num_classes) for _ in range(config.num_layers))
        self.apply(functools.partial(init_bert_weights, std=config.initializer_range))

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def _check_inputs(self, input_ids: object, attention_mask: object) -> None:
        if not isinstance(input_ids, Tensor) or input_ids.dim() != 2 or input_ids.dtype != torch.long:
            shape = tuple(input_ids.shape) if isinstance(input_ids, Tensor) else type(input_ids).__name__
            raise PlpruneError(f"input_ids must be an int64 tensor (batch, length), got {shape}")
        if input_ids.shape[1] < 1 or input_ids.shape[1] > self.config.max_length:
            raise PlpruneError(
                f"sequence length must lie in [1, max_length={self.config.max_length}], "
                f"got {input_ids.shape[1]}"
            )
        if input_ids.numel() and bool(((input_ids < 0) | (input_ids >= self.config.vocab_size)).any()):
            raise PlpruneError(f"input_ids must lie in [0, vocab_size={self.config.vocab_size})")
        if attention_mask is not None and (
            not isinstance(attention_mask, Tensor) or attention_mask.shape != input_ids.shape
        ):
            shape = tuple(attention_mask.shape) if isinstance(attention_mask, Tensor) else attention_mask
            raise PlpruneError(
                f"attention_mask must be a tensor of the input_ids' shape {tuple(input_ids.shape)}, "
                f"got {shape}"
            )

    def embed(self, input_ids: Tensor) -> Tensor:
        """Embeddings ``(B, T, hidden)``: token + position → LayerNorm → dropout (inputs not checked)."""
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        hidden = self.token_embedding(input_ids) + self.position_embedding(positions)[None]
        return self.embedding_dropout(self.embedding_norm(hidden))

    def classify(self, j: int, hidden: Tensor) -> Tensor:
        """Exit ``j``'s logits ``(B, num_classes)`` from layer ``j``'s hidden states ``(B, T, hidden)``."""
        first = hidden[:, 0]
        if self.final_norm is not None:
            first = self.final_norm(first)
        pooled = torch.tanh(self.pooler(first))
        return self.classifiers[j](self.classifier_dropout(pooled))

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> list[Tensor]:
        """Every layer's logits, ``[(B, num_classes)] * num_layers``, first layer first.

        ``attention_mask`` ``(B, T)``: 1 (or True) for tokens to attend to, 0 for padding.
        """
        self._check_inputs(input_ids, attention_mask)
        hidden = self.embed(input_ids)
        out = []
        for j, layer in enumerate(self.layers):
            hidden = layer(hidden, attention_mask)
            out.append(self.classify(j, hidden))
        return out

    def last_layer(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """The single-exit BERT: every layer, then only the last layer's classifier; ``(B, num_classes)``
        (``forward(...)[-1]`` without the other exits)."""
        self._check_inputs(input_ids, attention_mask)
        hidden = self.embed(input_ids)
        for layer in self.layers:
            hidden = layer(hidden, attention_mask)
        return self.classify(self.num_layers - 1, hidden)

    def layer_macs(self, length: int) -> int:
        """MACs per sample of one encoder layer on ``length`` tokens: Q, K, V and output projections
        ``4·T·H²``, scores and context ``2·T²·H``, feed-forward ``2·T·H·F``."""
        t = check_positive_int("length", length)
        h, f = self.config.hidden_size, self.config.ffn_size
        return 4 * t * h * h + 2 * t * t * h + 2 * t * h * f

    def head_macs(self) -> int:
        """MACs per sample of one exit: the pooler ``H²`` and the classifier ``H·C``."""
        h = self.config.hidden_size
        return h * h + h * self.num_classes

    def exit_macs(self, length: int) -> list[int]:
        """MACs per sample of leaving after layer ``j``: layers and exit heads ``0..j`` (cumulative)."""
        per_exit = self.layer_macs(length) + self.head_macs()
        return [per_exit * (j + 1) for j in range(self.num_layers)]

    @torch.no_grad()
    def infer_patience(
        self, input_ids: Tensor, patience: int, attention_mask: Tensor | None = None
    ) -> EarlyExitResult:
        """PABEE inference: layer by layer, only the samples that have not exited go on.

        Same rule as :func:`patience_exit`, and the same predictions and exit layers as it gives on
        ``forward(input_ids)`` (up to float round-off in batched kernels). ``macs`` counts the layers and
        exit heads each sample ran (``exit_macs(T)[exit_layer]``); ``exits_evaluated`` is the number of
        layers. Needs eval mode.
        """
        _check_eval(self, "infer_patience")
        self._check_inputs(input_ids, attention_mask)
        patience = _check_patience(patience)
        cumulative = self.exit_macs(input_ids.shape[1])
        hidden = self.embed(input_ids)
        book = _ExitBook(input_ids.shape[0])
        previous = counter = None
        mask = attention_mask
        last = self.num_layers - 1
        for j, layer in enumerate(self.layers):
            hidden = layer(hidden, mask)
            logits = self.classify(j, hidden)
            pred = logits.argmax(dim=-1)
            counter = torch.zeros_like(pred) if previous is None else (counter + 1) * (pred == previous)
            previous = pred
            if j < min(patience, last):  # the counter is at most j: no sample can leave yet
                continue
            stay = book.record(None if j == last else counter >= patience, logits, pred, j, cumulative[j])
            if stay is None:
                break
            if stay is not _ALL:
                hidden, previous, counter = hidden[stay], previous[stay], counter[stay]
                mask = None if mask is None else mask[stay]
        return book.result(self.num_classes, hidden.dtype, hidden.device)
