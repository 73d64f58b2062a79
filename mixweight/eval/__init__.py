"""Per-domain evaluation of language models on a corpus's validation streams."""

from mixweight.eval.domains import evaluate_domains, load_validation

__all__ = ["evaluate_domains", "load_validation"]
