"""``plprune compress``: a trained model directory in, a smaller and faster one out, with a report.

:func:`compress` runs the stages of :mod:`plprune.compress.pipeline` for one :class:`CompressSettings`.
"""

from plprune.compress.pipeline import compress
from plprune.compress.settings import CompressSettings

__all__ = ["CompressSettings", "compress"]
