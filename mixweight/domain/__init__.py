"""mixweight.domain."""
