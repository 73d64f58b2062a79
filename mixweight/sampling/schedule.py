"""Domain-weight schedules: which mixture to sample from at each training step.

`--domain-weights` takes one of:

- ``natural`` / ``uniform`` / a ``domain_weights.json``: one phase, from step 0;
- a ``domain_weights.json`` with ``--domain-weights-every K`` (K > 0): its ``trajectory``
  replayed, entry i from step i*K; the last entry holds after the trajectory ends;
- a schedule file (``.yaml``/``.yml``, or ``.json`` whose top level is a list)::

      - {start_step: 0, weights: natural}
      - {start_step: 1000, weights: {web: 0.5, code: 0.3, books: 0.2}}
      - {start_step: 5000, weights: doremi/domain_weights.json}

  ``weights`` is natural, uniform, a weights file (a relative path is taken from the
  schedule file's folder) or an inline ``{domain: weight}`` map. The first phase starts at
  step 0, start steps strictly increase, and no other keys are allowed.

Every phase's weights are checked against the corpus like a single weights file: the same
domains, finite, >= 0, summing to 1 (within 1e-3, then renormalized).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from pathlib import Path

import yaml

from mixweight.core.artifact import (
    check_against_manifest,
    is_file,
    load_domain_weights,
    parse_domain_weights,
    read_json,
    resolve_proportions,
    shown,
)
from mixweight.core.yamlio import load_yaml
from mixweight.data.manifest import Manifest
from mixweight.errors import MixweightError, did_you_mean

PHASE_KEYS = ("start_step", "weights")
NAMED = ("natural", "uniform")


@dataclass(frozen=True)
class Phase:
    start_step: int
    weights: dict[str, float]  # corpus domain order, sums to 1


def phase_at(phases: list[Phase], step: int) -> int:
    """Index of the phase that step `step` samples from."""
    return bisect.bisect_right([p.start_step for p in phases], step) - 1


def resolve_schedule(manifest: Manifest, spec: str, every: int = 0) -> list[Phase]:
    """The phases described by a `--domain-weights` value (see the module docstring)."""
    if every < 0:
        raise MixweightError(f"domain_weights_every must be >= 0, got {every}")
    if spec in NAMED:
        if every:
            raise MixweightError(
                f"domain_weights_every {every} needs a domain_weights.json with a trajectory, not '{spec}'"
            )
        return [Phase(0, resolve_proportions(manifest, spec))]
    path = Path(spec)
    if not is_file(path):
        raise MixweightError(
            f"domain weights '{shown(spec)}': expected natural, uniform, a domain_weights.json file, "
            "or a schedule file (.yaml/.json list of {start_step, weights})"
        )
    raw = _read_schedule(path)
    if raw is not None:
        if every:
            raise MixweightError(f"{path}: a schedule file sets its own phases; drop domain_weights_every ({every})")
        return _parse_schedule(raw, manifest, path)
    if not every:
        return [Phase(0, resolve_proportions(manifest, spec))]
    return _trajectory_phases(manifest, path, every)


def _read_schedule(path: Path):
    """The schedule list in `path`, or None when `path` is a domain-weights file."""
    if path.suffix in (".yaml", ".yml"):
        try:
            raw = load_yaml(path.read_text(encoding="utf-8"))  # refuses duplicate keys
        except UnicodeDecodeError as exc:
            raise MixweightError(f"schedule file {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
        except yaml.YAMLError as exc:  # PyYAML's messages span lines (with a caret); one line here
            raise MixweightError(f"schedule file {path}: not valid YAML ({' '.join(str(exc).split())})") from exc
        except ValueError as exc:  # an integer literal beyond Python's digit limit
            raise MixweightError(f"schedule file {path}: a number cannot be read ({exc})") from exc
        except RecursionError:
            raise MixweightError(f"schedule file {path}: nested too deeply to be a schedule") from None
        if not isinstance(raw, list):
            raise MixweightError(
                f"schedule file {path}: expected a list of {{start_step, weights}} phases, got {type(raw).__name__}"
            )
        return raw
    raw = read_json(path, "domain weights or schedule file")  # duplicate keys, huge numbers: one-line errors
    return raw if isinstance(raw, list) else None


def _key(key) -> str:
    return f"'{key}'" if isinstance(key, str) and key.isprintable() else repr(key)


def _parse_schedule(raw: list, manifest: Manifest, path: Path) -> list[Phase]:
    if not raw:
        raise MixweightError(f"schedule file {path}: no phases; give at least {{start_step: 0, weights: ...}}")
    phases = []
    for index, item in enumerate(raw):
        where = f"schedule file {path}, phase {index}"
        if not isinstance(item, dict):
            raise MixweightError(f"{where}: expected a {{start_step, weights}} map, got {item!r}")
        for key in item:
            if key not in PHASE_KEYS:
                hint = did_you_mean(key, PHASE_KEYS, cutoff=0.6)
                raise MixweightError(f"{where}: unknown key {_key(key)}; {hint}allowed: {', '.join(PHASE_KEYS)}")
        missing = [k for k in PHASE_KEYS if k not in item]
        if missing:
            raise MixweightError(f"{where}: missing {', '.join(missing)}")
        start = item["start_step"]
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise MixweightError(f"{where}: start_step must be an integer >= 0, got {start!r}")
        if index == 0 and start != 0:
            raise MixweightError(f"{where}: the first phase must start at step 0, got {start}")
        if phases and start == phases[-1].start_step:
            raise MixweightError(f"{where}: start_step {start} repeats the previous phase's; each step has one mixture")
        if phases and start < phases[-1].start_step:
            raise MixweightError(
                f"{where}: start_step {start} comes after {phases[-1].start_step}; "
                "list phases in increasing start_step order"
            )
        phases.append(Phase(start, _phase_weights(item["weights"], manifest, path, where)))
    return phases


def _phase_weights(value, manifest: Manifest, schedule: Path, where: str) -> dict[str, float]:
    if isinstance(value, dict):
        return check_against_manifest(parse_domain_weights({"weights": value}, where), manifest, where)
    if not isinstance(value, str):
        raise MixweightError(
            f"{where}: weights must be natural, uniform, a file, or a {{domain: weight}} map, got {value!r}"
        )
    if value in NAMED:
        return resolve_proportions(manifest, value)
    file = Path(value) if Path(value).is_absolute() else schedule.parent / value
    if not is_file(file):
        raise MixweightError(f"{where}: weights file {shown(file)} not found")
    return resolve_proportions(manifest, str(file))


def _trajectory_phases(manifest: Manifest, path: Path, every: int) -> list[Phase]:
    weights = load_domain_weights(path)
    if not weights.trajectory:
        raise MixweightError(
            f"{path}: domain_weights_every {every} follows the 'trajectory', but the file has none; "
            "set domain_weights_every 0 to use its final weights"
        )
    phases = []
    for index, entry in enumerate(weights.trajectory):
        where = f"{path}, trajectory entry {index}"
        if not isinstance(entry, dict) or "weights" not in entry:
            raise MixweightError(f"{where}: expected a map with 'weights'")
        parsed = parse_domain_weights({"domains": weights.domains, "weights": entry["weights"]}, where)
        phases.append(Phase(index * every, check_against_manifest(parsed, manifest, where)))
    return phases
