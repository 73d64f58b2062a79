"""The one rule for names that become directory names (domains; pipeline arms may reuse it).

A domain name is the name of its stream directory (``train/<domain>/``) and travels into
exports (Megatron's space-separated ``weight path`` lists), so it must be one plain path
component that survives any file system and any whitespace-split format.
"""

from __future__ import annotations

import unicodedata

MAX_NAME_BYTES = 100  # well under every file system's 255-byte file name limit, in UTF-8 bytes
NAME_RULE = (
    f"a name must be 1-{MAX_NAME_BYTES} UTF-8 bytes with no '/', '\\', whitespace or control characters, "
    "and must not start with '.'"
)


def name_problem(name) -> str | None:
    """Why `name` cannot be a directory name, or None when it can."""
    if not isinstance(name, str):
        return f"is a {type(name).__name__}, not a string"
    if not name:
        return "is empty"
    if name.startswith("."):  # also '.' and '..'; hidden directories are where staging copies live
        return "starts with '.'"
    for char in name:
        if char in "/\\":
            return f"contains {char!r}"
        if char.isspace():
            return f"contains whitespace ({char!r})"
        if unicodedata.category(char) in ("Cc", "Cf", "Cs"):  # control, invisible format, lone surrogate
            return f"contains the control character {char!r}"
    size = len(name.encode("utf-8"))
    if size > MAX_NAME_BYTES:
        return f"is {size} UTF-8 bytes long"
    return None
