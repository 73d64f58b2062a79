"""mixweight.report."""
