"""Plug-ins: installed packages' entry points that register extensions (weights methods, online mixers)."""

from __future__ import annotations

from mixweight.errors import MixweightError, first_line


def load_plugins(group: str, what: str) -> None:
    """Import every module named in the entry-point `group` (each registers itself when imported); an error in a
    plug-in's import is one line naming it (`what`: the kind of plug-in, for the message)."""
    from importlib.metadata import entry_points

    for entry in entry_points(group=group):
        try:
            entry.load()
        except Exception as exc:  # noqa: BLE001 - any error of a plug-in's import is one line naming it
            raise MixweightError(
                f"{what} plug-in {entry.name!r} ({entry.value}) failed to load: {first_line(exc)}"
            ) from exc
