"""Where a weights command may write (mixweight.core.outputs's one check, with this method's notion of its own):
--out a new file or the method's own earlier artifact, and its plots new too; the work directory new, empty or
this method's (its `<NAME>_config.yaml` record, or a layout an older mixweight left). Checked before anything is
read or trained.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from mixweight.core.outputs import check_output_path, is_json_with
from mixweight.errors import MixweightError

if TYPE_CHECKING:
    from mixweight.domain.proxy import ProxyMethodConfig

# The plots a method draws beside its artifact, <out stem>_<name>.png (default: trajectory and bars; regmix: fit).
PLOT_NAMES = ("trajectory", "bars", "fit")
# What a work directory made before the <name>_config.yaml record holds: DoReMi's rounds of runs, or the stamp
# file of an older DoGE or RegMix.
LEGACY_STAMPS = ("swarm.json", "doge_config_hash")
ROUND_DIR = re.compile(r"round-\d+")
ROUND_ENTRIES = {"reference", "proxy", "weights.json"}


def is_artifact_of(name: str):
    """owned(path) for --out: a weights file this method wrote (its method.name), which a rerun may replace."""
    return lambda path: is_json_with(
        path, lambda raw: isinstance(raw.get("method"), dict) and raw["method"].get("name") == name
    )


def is_work_dir_of(config: ProxyMethodConfig):
    """owned(path) for --work-dir: it holds this method's record, or is a work directory made before the record
    (an older DoGE's or RegMix's stamp file, or DoReMi's round-N directories of runs and nothing else)."""

    def owned(path: Path) -> bool:
        if (path / f"{config.NAME}_config.yaml").is_file() or any((path / s).is_file() for s in LEGACY_STAMPS):
            return True
        entries = [p for p in path.iterdir() if not p.name.startswith(".")]
        return bool(entries) and all(
            ROUND_DIR.fullmatch(e.name) and e.is_dir() and {c.name for c in e.iterdir()} <= ROUND_ENTRIES
            for e in entries
        )

    return owned


def check_outputs(config: ProxyMethodConfig) -> None:
    """--out and the work directory, before anything is read or trained (mixweight.core.outputs): --out a new
    file or this method's own earlier artifact, never an input nor inside a corpus or run; no plot beside a new
    artifact that would replace a file; the work directory new, empty or this method's, apart from --out."""
    out, work_dir, inputs = Path(config.out or "."), config.resolved_work_dir(), config.input_paths()
    owned = is_artifact_of(config.NAME)
    what = f"the {config.NAME} weights file"
    if config.out is not None:  # (a method may write no file: regmix's --plan alone)
        check_output_path(config.out, f"{config.COMMAND}: --out", kind="file", what=what, owned=owned, inputs=inputs)
    if config.out is not None and not (out.is_file() and owned(out)):  # a new artifact: its plots must be new too
        for name in PLOT_NAMES:
            plot = out.with_name(f"{out.stem}_{name}.png")
            if plot.exists():
                raise MixweightError(
                    f"{config.COMMAND}: --out {out}: its plot {plot} would replace a file this command did not "
                    "write; move that file, or choose another --out"
                )
    check_output_path(
        config.work_dir or work_dir,
        f"{config.COMMAND}: --work-dir" if config.work_dir else f"{config.COMMAND}: the work directory",
        kind="dir",
        what=f"the {config.NAME} work directory (its proxy runs)",
        owned=is_work_dir_of(config),
        inputs=[("--out", config.out), *inputs] if config.out is not None else inputs,
    )
