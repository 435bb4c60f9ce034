"""Named tasks: each builds (model, task) from a :class:`RunConfig` and a run directory."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from torch import nn

from plprune.data import (
    ClassificationData,
    CorpusText,
    build_or_load_tokenizer,
    default_data_dir,
    load_digits,
    load_mnist1d,
    prepare_mlm_data,
    pydoc_corpus,
    read_wikitext_dir,
)
from plprune.data.causal_lm import prepare_causal_lm_data
from plprune.errors import DataError, PlpruneError
from plprune.memory import build_if_it_fits
from plprune.models import VGG, BertConfig, BertForMaskedLM, ResNet, SwitchConfig, SwitchForMaskedLM
from plprune.run_config import RunConfig
from plprune.tasks.base import Task
from plprune.tasks.causal_lm import CausalLmTask
from plprune.tasks.classification import ClassificationTask, check_model_input
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


def mlm_model_for(config: RunConfig, vocab_size: int, *, switch: bool = False, hf: bool = False) -> nn.Module:
    """The masked-LM model a run config describes: plprune's BERT, its Switch variant (``switch``) or a
    Hugging Face BertForMaskedLM of the same sizes (``hf``), freshly initialised."""
    bert_config = bert_config_for(config, vocab_size)
    if switch:
        m = config.model
        switch_config = SwitchConfig(
            num_experts=m.experts,
            capacity_factor=m.capacity_factor,
            aux_loss_weight=m.aux_loss_weight,
            expert_ffn_size=m.expert_ffn,
        )
        return build_if_it_fits(lambda: SwitchForMaskedLM(bert_config, switch_config), "the Switch model")
    if hf:
        from plprune.models.hf_bert import HfBertForMaskedLM  # imports transformers

        return build_if_it_fits(lambda: HfBertForMaskedLM(bert_config), "the Hugging Face BERT")
    return build_if_it_fits(lambda: BertForMaskedLM(bert_config), "the BERT")


def _build_mlm(
    config: RunConfig, run_dir: Path, corpus: CorpusText, switch: bool = False, hf: bool = False
) -> tuple[nn.Module, Task]:
    tokenizer = build_or_load_tokenizer(
        Path(run_dir) / TOKENIZER_FILE,
        corpus.train,
        kind=config.data.tokenizer,
        min_freq=config.data.min_freq,
        vocab_size=config.data.bpe_vocab_size,
    )
    data = prepare_mlm_data(corpus, tokenizer, config.data.seq_len)
    if config.data.train_fraction < 1.0:
        keep = max(config.train.batch_size, round(config.data.train_fraction * data.train_blocks.shape[0]))
        data = dataclasses.replace(data, train_blocks=data.train_blocks[:keep])
    model = mlm_model_for(config, tokenizer.vocab_size, switch=switch, hf=hf)
    task = MlmTask(
        data,
        config.train.batch_size,
        config.train.seed,
        config.train.eval_batches,
        static_masking=config.data.masking == "static",
    )
    return model, task


def build_bert_wikitext2(config: RunConfig, run_dir: Path) -> tuple[nn.Module, Task]:
    """BERT MLM on WikiText-2: trains on ``valid.txt``, evaluates on ``test.txt`` (see DataConfig)."""
    return _build_mlm(config, run_dir, _wikitext_corpus(config))


def build_bert_pydoc(config: RunConfig, run_dir: Path) -> tuple[nn.Module, Task]:
    """BERT MLM on CPython's bundled pydoc help text (no download; used by ``plprune demo``)."""
    return _build_mlm(config, run_dir, pydoc_corpus())


def build_hf_bert_wikitext2(config: RunConfig, run_dir: Path) -> tuple[nn.Module, Task]:
    """Hugging Face ``transformers.BertForMaskedLM`` (eager attention, sizes from the run config) as MLM on
    WikiText-2; its heads are found by the ``hf-bert`` adapter (needs ``transformers``)."""
    return _build_mlm(config, run_dir, _wikitext_corpus(config), hf=True)


def build_hf_bert_pydoc(config: RunConfig, run_dir: Path) -> tuple[nn.Module, Task]:
    """Hugging Face BERT MLM on the offline pydoc corpus (demo-sized runs)."""
    return _build_mlm(config, run_dir, pydoc_corpus(), hf=True)


def build_switch_wikitext2(config: RunConfig, run_dir: Path) -> tuple[nn.Module, Task]:
    """Switch-Transformer MLM (every FFN a top-1 mixture of experts) on WikiText-2 (valid.txt → test.txt)."""
    return _build_mlm(config, run_dir, _wikitext_corpus(config), switch=True)


def build_switch_pydoc(config: RunConfig, run_dir: Path) -> tuple[nn.Module, Task]:
    """Switch-Transformer MLM on the offline pydoc corpus."""
    return _build_mlm(config, run_dir, pydoc_corpus(), switch=True)


def causal_lm_model_for(config: RunConfig, vocab_size: int) -> nn.Module:
    """The Hugging Face Llama-style causal LM a run config describes (``layers``, ``hidden``, ``heads`` query
    heads, ``kv_heads`` key/value heads, ``ffn`` SwiGLU width, ``dropout`` as attention dropout, max positions
    = ``seq_len``, tied embeddings), freshly initialised."""
    from plprune.models.hf_llama import CausalLmConfig, HfLlamaForCausalLM  # imports transformers

    m = config.model
    llama_config = CausalLmConfig(
        vocab_size=vocab_size,
        hidden_size=m.hidden,
        num_layers=m.layers,
        num_heads=m.heads,
        num_kv_heads=m.heads if m.kv_heads is None else m.kv_heads,
        ffn_size=m.ffn,
        max_length=config.data.seq_len,
        attention_dropout=m.dropout,
    )
    return build_if_it_fits(lambda: HfLlamaForCausalLM(llama_config), "the Hugging Face Llama")


def _build_causal_lm(config: RunConfig, run_dir: Path, corpus: CorpusText) -> tuple[nn.Module, Task]:
    tokenizer = build_or_load_tokenizer(
        Path(run_dir) / TOKENIZER_FILE,
        corpus.train,
        kind=config.data.tokenizer,
        min_freq=config.data.min_freq,
        vocab_size=config.data.bpe_vocab_size,
    )
    data = prepare_causal_lm_data(corpus, tokenizer, config.data.seq_len)
    if config.data.train_fraction < 1.0:
        keep = max(config.train.batch_size, round(config.data.train_fraction * data.train_inputs.shape[0]))
        data = dataclasses.replace(
            data, train_inputs=data.train_inputs[:keep], train_labels=data.train_labels[:keep]
        )
    model = causal_lm_model_for(config, tokenizer.vocab_size)
    return model, CausalLmTask(data, config.train.batch_size, config.train.seed, config.train.eval_batches)


def build_hf_llama_wikitext2(config: RunConfig, run_dir: Path) -> tuple[nn.Module, Task]:
    """Hugging Face ``transformers.LlamaForCausalLM`` (grouped-query attention, eager, sizes from the run
    config) as a next-token LM on WikiText-2: trains on ``valid.txt``, evaluates on ``test.txt``."""
    return _build_causal_lm(config, run_dir, _wikitext_corpus(config))


def build_hf_llama_pydoc(config: RunConfig, run_dir: Path) -> tuple[nn.Module, Task]:
    """The Hugging Face Llama causal LM on the offline pydoc corpus (demo-sized runs, no files needed)."""
    return _build_causal_lm(config, run_dir, pydoc_corpus())


def _build_cnn(config: RunConfig, data: ClassificationData, architecture: str) -> tuple[nn.Module, Task]:
    m = config.model
    shape = {"in_channels": data.in_channels, "num_classes": data.num_classes, "dims": data.dims}
    if architecture == "vgg":
        model: nn.Module = build_if_it_fits(
            lambda: VGG(width_multiplier=m.width_multiplier, **shape), "the VGG"
        )
    else:
        model = build_if_it_fits(
            lambda: ResNet(depth=m.depth, width_multiplier=m.width_multiplier, **shape), "the ResNet"
        )
    check_model_input(model, data)
    if config.data.train_fraction < 1.0:  # fewer training samples, same test set: more over-parameterised
        keep = max(config.train.batch_size, round(config.data.train_fraction * data.train_y.shape[0]))
        data = dataclasses.replace(data, train_x=data.train_x[:keep], train_y=data.train_y[:keep])
    return model, ClassificationTask(
        data, config.train.batch_size, config.train.seed, config.train.eval_batches
    )


def build_vgg_mnist1d(config: RunConfig, run_dir: Path) -> tuple[nn.Module, Task]:
    """VGG-16 (BN, width × w, 1-D convolutions) on MNIST-1D, generated offline (data seed fixed at 0)."""
    return _build_cnn(config, load_mnist1d(num_samples=config.data.num_samples, seed=0), "vgg")


def build_resnet_mnist1d(config: RunConfig, run_dir: Path) -> tuple[nn.Module, Task]:
    """CIFAR-style ResNet (depth 6n+2, inner block filters prunable) on MNIST-1D."""
    return _build_cnn(config, load_mnist1d(num_samples=config.data.num_samples, seed=0), "resnet")


def build_vgg_digits(config: RunConfig, run_dir: Path) -> tuple[nn.Module, Task]:
    """VGG-16 (BN, width × w, 2-D convolutions) on scikit-learn's bundled 8×8 digits."""
    return _build_cnn(config, load_digits(seed=0), "vgg")


TASKS: dict[str, Callable[[RunConfig, Path], tuple[nn.Module, Task]]] = {
    "bert-wikitext2": build_bert_wikitext2,
    "bert-pydoc": build_bert_pydoc,
    "switch-wikitext2": build_switch_wikitext2,
    "switch-pydoc": build_switch_pydoc,
    "vgg-mnist1d": build_vgg_mnist1d,
    "resnet-mnist1d": build_resnet_mnist1d,
    "vgg-digits": build_vgg_digits,
    "hf-bert-wikitext2": build_hf_bert_wikitext2,
    "hf-bert-pydoc": build_hf_bert_pydoc,
    "hf-llama-wikitext2": build_hf_llama_wikitext2,
    "hf-llama-pydoc": build_hf_llama_pydoc,
}

# the groups a task prunes when the config names none (paper: heads for BERT, experts for Switch)
DEFAULT_KINDS: dict[str, tuple[str, ...]] = {
    "bert-wikitext2": ("head",),
    "bert-pydoc": ("head",),
    "switch-wikitext2": ("expert",),
    "switch-pydoc": ("expert",),
    "vgg-mnist1d": ("filter",),
    "resnet-mnist1d": ("filter",),
    "vgg-digits": ("filter",),
    "hf-bert-wikitext2": ("head",),
    "hf-bert-pydoc": ("head",),
    "hf-llama-wikitext2": ("head",),
    "hf-llama-pydoc": ("head",),
}

# tasks whose model reads [model] kv_heads (grouped-query attention); elsewhere the key is refused
KV_HEADS_TASKS = ("hf-llama-wikitext2", "hf-llama-pydoc")

_CNN_TRAIN = {"optimizer": "sgd", "momentum": 0.9, "weight_decay": 5e-4, "grad_clip": 0.0, "batch_size": 32}
_LINEAR = {"schedule": "linear", "ratio": 0.5, "prune_every": "1e"}
# per-task defaults, applied below a --config file and flags (paper E.4: SGD, momentum, ×0.1 at 1/2, 3/4;
# linear filter schedule from 7.5% of training). Sizes and LRs scaled for 2 CPU cores (docs/training.md).
TASK_DEFAULTS: dict[str, dict] = {
    "vgg-mnist1d": {
        "model": {"width_multiplier": 0.25},
        "train": {**_CNN_TRAIN, "lr": 0.02, "steps": 3000, "eval_every": 300},
        "prune": {**_LINEAR, "prune_at": "3e", "prune_end": "15e"},
    },
    "resnet-mnist1d": {
        "model": {"width_multiplier": 0.5, "depth": 20},
        "train": {**_CNN_TRAIN, "lr": 0.1, "steps": 3000, "eval_every": 300},
        "prune": {**_LINEAR, "prune_at": "3e", "prune_end": "15e"},
    },
    "vgg-digits": {
        "model": {"width_multiplier": 0.25},
        "train": {**_CNN_TRAIN, "lr": 0.02, "steps": 900, "eval_every": 100},
        "prune": {**_LINEAR, "prune_at": "2e", "prune_end": "10e"},
    },
    "switch-wikitext2": {"prune": {"ratio": 0.5}},
    "switch-pydoc": {"prune": {"ratio": 0.5}},
    # Llama-style decoder at the BERT tasks' CPU size: 4 layers, hidden 128, 8 query heads of 16 dims sharing
    # 2 key/value heads; SwiGLU width 344 (3 matrices of 128 x 344 ≈ BERT's 2 of 128 x 512); no dropout
    "hf-llama-wikitext2": {"model": {"kv_heads": 2, "ffn": 344, "dropout": 0.0}},
    "hf-llama-pydoc": {"model": {"kv_heads": 2, "ffn": 344, "dropout": 0.0}},
}


def build_task(config: RunConfig, run_dir: Path) -> tuple[nn.Module, Task]:
    """Seed torch, then build the named task's model and data."""
    import torch

    check_choice("task", config.task, TASKS)
    if config.model.kv_heads is not None and config.task not in KV_HEADS_TASKS:
        raise PlpruneError(
            f"[model] kv_heads (grouped-query attention) applies to the tasks {', '.join(KV_HEADS_TASKS)} "
            f"only, not {config.task}; remove it"
        )
    torch.manual_seed(config.train.seed)
    return TASKS[config.task](config, run_dir)
