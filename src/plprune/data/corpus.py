"""Raw text corpora: WikiText-2 from a local directory, CPython's pydoc topics, or HF ``datasets``.

Every loader returns a :class:`CorpusText` holding the *training* text, the *test* text and a
human-readable description of where they came from. Tokenisation into ids happens later
(:mod:`plprune.data.tokenizer`), always with a vocabulary built on the training text only.

Project convention for WikiText-2: the official training split is not available on our machines, so
we train on ``valid.txt`` and evaluate on ``test.txt`` (:func:`read_wikitext_dir`'s defaults). Say so
wherever results are reported; ``CorpusText.source`` does.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from plprune.errors import DataError, PlpruneError
from plprune.validation import check_choice

DATA_DIR_ENV = "PLPRUNE_DATA_DIR"
"""Environment variable naming the directory that holds ``valid.txt`` / ``test.txt``."""

HF_WIKITEXT_PATH = "Salesforce/wikitext"
"""Hugging Face Hub dataset holding WikiText (the canonical ``wikitext`` name redirects here)."""

HF_WIKITEXT_CONFIGS = ("wikitext-2-raw-v1", "wikitext-2-v1", "wikitext-103-raw-v1", "wikitext-103-v1")
HF_WIKITEXT_SPLITS = ("train", "validation", "test")

_WORD_OR_PUNCT = re.compile(r"\w+|[^\w\s]")
_RST_RULE = re.compile(r"^\s*([^\w\s])\1{2,}\s*$")  # "*****", "=====", "-----" underlines


@dataclass(frozen=True)
class CorpusText:
    """Training and test text of one corpus, plus where it came from."""

    train: str
    test: str
    source: str


def default_data_dir() -> Path | None:
    """The WikiText directory named by ``$PLPRUNE_DATA_DIR``, or ``None`` when it is unset or empty."""
    value = os.environ.get(DATA_DIR_ENV, "").strip()
    return Path(value).expanduser() if value else None


def read_wikitext_dir(
    data_dir: str | os.PathLike[str], train_file: str = "valid.txt", test_file: str = "test.txt"
) -> CorpusText:
    """Read word-level WikiText from ``data_dir``: ``train_file`` for training, ``test_file`` for test.

    The defaults follow the project convention (train on ``valid.txt``, evaluate on ``test.txt``)
    because the official training split is not available. Raises :class:`DataError` when the
    directory or a file is missing, a file is empty / whitespace-only, or not valid UTF-8.
    """
    directory = Path(data_dir).expanduser()
    if not directory.exists():
        raise DataError(
            f"data directory {str(directory)!r} does not exist; pass --data-dir DIR or set "
            f"{DATA_DIR_ENV}=DIR to a directory holding {train_file} and {test_file}"
        )
    if not directory.is_dir():
        raise DataError(
            f"data directory {str(directory)!r} is not a directory; pass --data-dir DIR or set "
            f"{DATA_DIR_ENV}=DIR to a directory holding {train_file} and {test_file}"
        )
    train = _read_text_file(directory, train_file, "training")
    test = _read_text_file(directory, test_file, "test")
    source = f"WikiText-2 {train_file} (train) / {test_file} (test) from {directory}"
    return CorpusText(train=train, test=test, source=source)


def _read_text_file(directory: Path, name: str, role: str) -> str:
    """Read ``directory / name`` as non-empty UTF-8 text, with clear errors for the ``role`` split."""
    path = directory / name
    if not path.is_file():
        try:
            present = sorted(p.name for p in directory.iterdir())
        except OSError as exc:
            raise DataError(f"cannot list data directory {str(directory)!r}: {exc}") from exc
        listing = ", ".join(present) if present else "(the directory is empty)"
        raise DataError(f"{role} file {name!r} not found in {str(directory)!r}; files present: {listing}")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {role} file {str(path)!r}: {exc}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{role} file {str(path)!r} is not valid UTF-8 (byte offset {exc.start}: {exc.reason}); "
            "WikiText files must be UTF-8 text"
        ) from exc
    if not text.strip():
        raise DataError(f"{role} file {str(path)!r} is empty or whitespace-only; it must contain text")
    return text


def word_tokenize_line(line: str) -> str:
    """Split ``line`` into words and punctuation marks joined by single spaces (``"foo."`` -> ``"foo ."``)."""
    return " ".join(_WORD_OR_PUNCT.findall(line))


def _pydoc_document(text: str) -> str:
    """One pydoc topic as WikiText-like lines: word-tokenised, rST underlines and blank lines dropped."""
    lines = (word_tokenize_line(line) for line in text.splitlines() if not _RST_RULE.match(line))
    return "\n".join(line for line in lines if line)


def _drop_contained(documents: dict[str, str]) -> dict[str, str]:
    """Drop documents that are contained verbatim in another one (the later name of identical pairs).

    Many pydoc topics are sections of bigger ones (``if`` is part of ``compound``); keeping both
    would put the same text in train and test.
    """
    return {
        name: doc
        for name, doc in documents.items()
        if not any(
            other != name and doc in other_doc and (doc != other_doc or other < name)
            for other, other_doc in documents.items()
        )
    }


def _split_topic_names(names: list[str], test_fraction: float) -> tuple[list[str], list[str]]:
    """Deterministically split topic names into (train, test), each in sorted order.

    Topics are ranked by the SHA-256 of their name (a fixed pseudo-random shuffle that does not
    depend on Python's ``random`` module); the last ``ceil(test_fraction * n)`` ranked topics are test.
    """
    ranked = sorted(names, key=lambda name: hashlib.sha256(name.encode("utf-8")).hexdigest())
    n_test = min(max(1, math.ceil(test_fraction * len(ranked))), len(ranked) - 1)
    test = set(ranked[len(ranked) - n_test :])
    return sorted(n for n in names if n not in test), sorted(test)


def pydoc_corpus(test_fraction: float = 0.1) -> CorpusText:
    """Real English text that ships with CPython: the help topics in ``pydoc_data.topics``.

    Each topic (document) is word-tokenised WikiText-style (punctuation split from words, one line
    per source line, rST underline rows and blank lines dropped; case is kept). Topics contained
    verbatim in another topic are dropped (about a third of them are sections of bigger topics), so
    no document appears in both splits. Whole topics are then split into train and test: ranked by
    SHA-256 of their name, the last ``ceil(test_fraction * n_topics)`` go to test. Documents are
    separated by a blank line. Needs no files and no network, so it suits tests and quick
    experiments (CPython 3.11: 57 distinct topics, ~89k tokens).
    """
    if (
        isinstance(test_fraction, bool)
        or not isinstance(test_fraction, (int, float))
        or not math.isfinite(test_fraction)
        or not 0 < test_fraction <= 0.5
    ):
        raise PlpruneError(f"test_fraction must lie in (0, 0.5], got {test_fraction!r}")
    try:
        from pydoc_data.topics import topics
    except ImportError as exc:  # some minimal Python builds strip pydoc_data
        raise DataError(
            "this Python has no pydoc_data.topics module; use read_wikitext_dir() with --data-dir instead"
        ) from exc
    documents = {name: _pydoc_document(text) for name, text in topics.items()}
    documents = _drop_contained({name: doc for name, doc in documents.items() if doc})
    if len(documents) < 2:
        raise DataError(f"pydoc_data.topics has {len(documents)} non-empty topics; need at least 2")
    train_names, test_names = _split_topic_names(list(documents), float(test_fraction))
    source = (
        f"CPython {sys.version.split()[0]} pydoc_data.topics: {len(train_names)} topics (train) / "
        f"{len(test_names)} topics (test), split by SHA-256 of topic name; "
        f"{len(topics) - len(documents)} topics contained in others dropped"
    )
    return CorpusText(
        train="\n\n".join(documents[n] for n in train_names) + "\n",
        test="\n\n".join(documents[n] for n in test_names) + "\n",
        source=source,
    )


def load_wikitext2_hf(
    config: str = "wikitext-2-raw-v1", train_split: str = "train", test_split: str = "test"
) -> CorpusText:
    """Load WikiText from the Hugging Face Hub with the optional ``datasets`` package.

    Needs ``pip install plprune[hf]`` and network access (or a warm HF cache). Each split's rows are
    lines that already end in ``"\\n"``; they are concatenated unchanged. The ``-raw-`` configs are
    untokenised text (no ``<unk>``); the others match the files :func:`read_wikitext_dir` reads.
    """
    check_choice("WikiText config", config, HF_WIKITEXT_CONFIGS)
    check_choice("train split", train_split, HF_WIKITEXT_SPLITS)
    check_choice("test split", test_split, HF_WIKITEXT_SPLITS)
    if train_split == test_split:
        raise PlpruneError(f"train_split and test_split must differ, both are {train_split!r}")
    try:
        import datasets
    except ImportError as exc:
        raise PlpruneError(
            "loading WikiText from the Hugging Face Hub needs the 'datasets' package: "
            "pip install plprune[hf] (or use read_wikitext_dir() with a local directory)"
        ) from exc
    try:
        dataset = datasets.load_dataset(HF_WIKITEXT_PATH, config)
    except Exception as exc:  # network, hub or cache failures: report them as data errors
        raise DataError(f"could not load {HF_WIKITEXT_PATH} config {config!r}: {exc}") from exc
    texts = {}
    for split in (train_split, test_split):
        try:
            rows = dataset[split]["text"]
        except KeyError as exc:
            raise DataError(f"{HF_WIKITEXT_PATH} config {config!r} has no split {split!r}") from exc
        text = "".join(rows)
        if not text.strip():
            raise DataError(f"{HF_WIKITEXT_PATH} config {config!r} split {split!r} is empty")
        texts[split] = text
    source = f"HF {HF_WIKITEXT_PATH} {config}: {train_split} (train) / {test_split} (test)"
    return CorpusText(train=texts[train_split], test=texts[test_split], source=source)
