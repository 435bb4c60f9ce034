"""Keep third-party chatter off the user's console while plprune calls into a library on their behalf."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence warnings, ``logging`` below ERROR, and Python-level stdout/stderr for the block (exporters
    print progress and warn about tracing; building a Hugging Face model from a config logs about token ids).
    Failures still raise: the caller reports them."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)
