"""mixweight.eval."""
