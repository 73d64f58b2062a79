"""mixweight.report: compare finished runs in tables and plots (`mixweight compare RUN... --out DIR`)."""

from mixweight.report.compare import compare_runs

__all__ = ["compare_runs"]
