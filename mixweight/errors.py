"""The one exception type for mistakes a user can make (bad flags, files, configs).

The CLI prints these as one clear line instead of a traceback; everything else is a bug.
"""


class MixweightError(ValueError):
    """Bad user input: the message says what was wrong, where, and what would be right."""
