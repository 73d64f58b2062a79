"""`mixweight eval`: per-domain validation loss and downstream tasks of a finished run."""
