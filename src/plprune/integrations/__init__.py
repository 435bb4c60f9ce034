"""Adapters between plprune and other training frameworks (Hugging Face ``Trainer``)."""
