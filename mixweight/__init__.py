"""mixweight: domain weights and loss-based sample weights for multi-domain LM pretraining."""

__version__ = "0.1.0"
