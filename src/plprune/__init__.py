"""plprune: structured pruning during training with the Polyak-Łojasiewicz condition."""

__version__ = "0.1.0"
