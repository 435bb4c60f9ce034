"""Data for masked-language modelling: corpora, tokenizers, blocks and BERT-style masking.

Typical use::

    corpus = read_wikitext_dir(data_dir)              # train on valid.txt, test on test.txt
    tokenizer = build_or_load_tokenizer(run_dir / "tokenizer.json", corpus.train)
    data = prepare_mlm_data(corpus, tokenizer, seq_len=128)
    masker = MlmMasker.from_tokenizer(tokenizer)
    eval_batches = fixed_masked_batches(data.test_blocks, masker, batch_size=32, seed=0)
"""

from plprune.data.corpus import (
    DATA_DIR_ENV,
    CorpusText,
    default_data_dir,
    load_wikitext2_hf,
    pydoc_corpus,
    read_wikitext_dir,
)
from plprune.data.images import ClassificationData, load_cifar, load_digits, load_mnist1d
from plprune.data.mlm import (
    IGNORE_INDEX,
    MlmData,
    MlmMasker,
    fixed_masked_batches,
    make_blocks,
    prepare_mlm_data,
)
from plprune.data.tokenizer import (
    DEFAULT_BPE_VOCAB_SIZE,
    DEFAULT_MIN_FREQ,
    SPECIAL_TOKENS,
    TOKENIZER_KINDS,
    BpeTokenizer,
    Tokenizer,
    WordTokenizer,
    build_or_load_tokenizer,
    load_tokenizer,
)

__all__ = [
    "DATA_DIR_ENV",
    "DEFAULT_BPE_VOCAB_SIZE",
    "DEFAULT_MIN_FREQ",
    "IGNORE_INDEX",
    "SPECIAL_TOKENS",
    "TOKENIZER_KINDS",
    "BpeTokenizer",
    "ClassificationData",
    "CorpusText",
    "MlmData",
    "MlmMasker",
    "Tokenizer",
    "WordTokenizer",
    "build_or_load_tokenizer",
    "default_data_dir",
    "fixed_masked_batches",
    "load_cifar",
    "load_digits",
    "load_mnist1d",
    "load_tokenizer",
    "load_wikitext2_hf",
    "make_blocks",
    "prepare_mlm_data",
    "pydoc_corpus",
    "read_wikitext_dir",
]
