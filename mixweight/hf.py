"""Hugging Face Trainer integration: `from mixweight.hf import ReweightingTrainer`."""

from mixweight.train.hf import ReweightingTrainer

__all__ = ["ReweightingTrainer"]
