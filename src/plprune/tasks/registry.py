"""Named tasks: each builds (model, task) from a :class:`RunConfig` and a run directory."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn

from plprune.data import (
    CorpusText,
    build_or_load_tokenizer,
    default_data_dir,
    prepare_mlm_data,
    pydoc_corpus,
    read_wikitext_dir,
)
from plprune.errors import DataError
from plprune.models import BertConfig, BertForMaskedLM, SwitchConfig, SwitchForMaskedLM
from plprune.run_config import RunConfig
from plprune.tasks.base import Task
from plprune.tasks.mlm import MlmTask
from plprune.validation import check_choice

TOKENIZER_FILE = "tokenizer.json"


def _wikitext_corpus(config: RunConfig) -> CorpusText:
    data_dir = config.data.data_dir or default_data_dir()
    if data_dir is None:
        raise DataError(
            f"task {config.task} needs a data directory: pass --data-dir DIR (containing "
            f"{config.data.train_file} and {config.data.test_file}) or set PLPRUNE_DATA_DIR"
        )
    return read_wikitext_dir(data_dir, train_file=config.data.train_file, test_file=config.data.test_file)


def bert_config_for(config: RunConfig, vocab_size: int) -> BertConfig:
    """The :class:`BertConfig` a run config describes (model sizes, dropout, max length = seq_len)."""
    m = config.model
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=m.hidden,
        num_layers=m.layers,
        num_heads=m.heads,
        ffn_size=m.ffn,
        max_length=config.data.seq_len,
        dropout=m.dropout,
        attention_dropout=m.dropout,
        pre_layer_norm=m.pre_layer_norm,
    )


def _build_mlm(
    config: RunConfig, run_dir: Path, corpus: CorpusText, switch: bool = False
) -> tuple[nn.Module, Task]:
    tokenizer = build_or_load_tokenizer(
        Path(run_dir) / TOKENIZER_FILE,
        corpus.train,
        kind=config.data.tokenizer,
        min_freq=config.data.min_freq,
        vocab_size=config.data.bpe_vocab_size,
    )
    data = prepare_mlm_data(corpus, tokenizer, config.data.seq_len)
    bert_config = bert_config_for(config, tokenizer.vocab_size)
    if switch:
        m = config.model
        switch_config = SwitchConfig(
            num_experts=m.experts,
            capacity_factor=m.capacity_factor,
            aux_loss_weight=m.aux_loss_weight,
            expert_ffn_size=m.expert_ffn,
        )
        model: nn.Module = SwitchForMaskedLM(bert_config, switch_config)
    else:
        model = BertForMaskedLM(bert_config)
    task = MlmTask(data, config.train.batch_size, config.train.seed, config.train.eval_batches)
    return model, task


def build_bert_wikitext2(config: RunConfig, run_dir: Path) -> tuple[nn.Module, Task]:
    """BERT MLM on WikiText-2: trains on ``valid.txt``, evaluates on ``test.txt`` (see DataConfig)."""
    return _build_mlm(config, run_dir, _wikitext_corpus(config))


def build_bert_pydoc(config: RunConfig, run_dir: Path) -> tuple[nn.Module, Task]:
    """BERT MLM on CPython's bundled pydoc help text (no download; used by ``plprune demo``)."""
    return _build_mlm(config, run_dir, pydoc_corpus())


def build_switch_wikitext2(config: RunConfig, run_dir: Path) -> tuple[nn.Module, Task]:
    """Switch-Transformer MLM (every FFN a top-1 mixture of experts) on WikiText-2 (valid.txt → test.txt)."""
    return _build_mlm(config, run_dir, _wikitext_corpus(config), switch=True)


def build_switch_pydoc(config: RunConfig, run_dir: Path) -> tuple[nn.Module, Task]:
    """Switch-Transformer MLM on the offline pydoc corpus."""
    return _build_mlm(config, run_dir, pydoc_corpus(), switch=True)


TASKS: dict[str, Callable[[RunConfig, Path], tuple[nn.Module, Task]]] = {
    "bert-wikitext2": build_bert_wikitext2,
    "bert-pydoc": build_bert_pydoc,
    "switch-wikitext2": build_switch_wikitext2,
    "switch-pydoc": build_switch_pydoc,
}

# the groups a task prunes when the config names none (paper: heads for BERT, experts for Switch)
DEFAULT_KINDS: dict[str, tuple[str, ...]] = {
    "bert-wikitext2": ("head",),
    "bert-pydoc": ("head",),
    "switch-wikitext2": ("expert",),
    "switch-pydoc": ("expert",),
}


def build_task(config: RunConfig, run_dir: Path) -> tuple[nn.Module, Task]:
    """Seed torch, then build the named task's model and data."""
    import torch

    check_choice("task", config.task, TASKS)
    torch.manual_seed(config.train.seed)
    return TASKS[config.task](config, run_dir)
