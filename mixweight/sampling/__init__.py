"""mixweight.sampling."""
