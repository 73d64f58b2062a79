"""mixweight.train."""
