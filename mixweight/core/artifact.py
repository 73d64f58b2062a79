"""`domain_weights.json`: domain weights with the story of how they were made.

Fields (docs/weights-methods.md):

- ``domains``: EVERY domain of the corpus the weights were computed on, in corpus order;
- ``weights`` (final, sum 1), ``last_weights`` (the last step's), both in ``domains`` order;
- ``targets``: names of held-out evaluation targets (DoGE out-of-domain); they sit at
  weight 0 in ``weights`` and are never sampled. Weights over the other domains sum to 1;
- ``method`` (name and hyperparameters), ``provenance`` (seed, config hash, proxy spec,
  tokenizer fingerprint, domain token counts, mixweight version): mappings;
- ``trajectory``: per logged step ``{"step", "weights", "signal"}``; ``weights`` is a list in
  ``domains`` order (DoReMi) or a ``{domain: weight}`` map over every corpus domain (DoGE);
- ``warnings``: what `mixweight.domain.health.weight_warnings` found (collapse, floor, not
  converged), each ``{"code", "step", "domains", "message"}``;
- ``compute``: the training FLOPs of the runs that made the weights (reference, proxy, swarm):
  ``{"flops": total, "runs": {run: FLOPs}}``, each run's from its eval.json (null for a run of an
  older mixweight, and then the total is null too; docs/algorithms.md section 7);
- ``replay``: everything `mixweight weights verify` needs to recompute the trajectory::

      {"domains": [...],            # the domains the update rule runs over (arrays below use this order):
                                     #   every domain for DoReMi, the training domains for DoGE
       "steps": T,                   # number of updates
       "initial_weights": [k],       # the weights before step 1
       "signals": [[k] x T],         # step t's per-domain signal as measured (DoReMi: excess loss,
                                     #   DoGE: score); a value where present[t][i] is false is unused
       "present": [[bool x k] x T],  # which domains the step's global batch held
       "average_start": 1,           # the final weights average rows average_start..T of the trajectory
       ...}                          # method parameters and per-step arrays (DoReMi: eta, smoothing,
                                     #   initial_signal; DoGE: mu, "lr": [T], ...)

  `mixweight.domain.<method>.replay(artifact)` turns it back into the per-step weights,
  a numpy array [T + 1, k] whose row 0 is ``initial_weights``.

A hand-written file with only ``domains`` and ``weights`` (a list in domain order, or a
``{domain: weight}`` map; then ``domains`` may be omitted) is valid input anywhere. It must
name every corpus domain, unless it says ``"missing": "zero"``: then the corpus domains it
omits get weight 0 (and the run says so), because a silent zero is how data goes missing.

Weights that do not sum to 1: within 1e-3 of 1 they are renormalized (published
weights are rounded to two or three digits); further off they are refused, because
that is a mistake (percentages, a missing domain) that silent normalizing would hide.

API for the weights commands (stable):

- ``DomainWeights(domains, weights, last_weights=None, method={}, trajectory=[], provenance={},
  targets=[], warnings=[], replay={}, missing=None, compute={})``; ``.validate(where)`` checks it and
  ``.write(path)`` validates, then writes atomically;
- ``corpus_weights(corpus_domains, by_domain) -> list[float]``: weights in corpus order, 0.0
  for every domain `by_domain` does not name (the held-out targets);
- ``check_output_file(path, flag) -> Path``: refuses, before any training, an output path
  that exists, is a directory, lies inside a corpus or run, or cannot be written;
- ``replay_arrays(artifact, method, params, vectors) -> (block, where)``: the ``replay`` block checked
  (shape, finiteness, lengths); ``replay_steps_array(block, key, where)`` for per-step arrays;
- ``finite_number(value, where, field)``, ``number_mapping(value, where, field)``: a field a method reads
  back from an artifact (``weights verify``), checked in one line naming the file and the field;
- ``read_json(path, what)`` (from `mixweight.core.jsonio`): strict JSON reading (duplicate keys, huge numbers,
  bad bytes are one-line errors); ``load_domain_weights(path)``, ``parse_domain_weights(raw, where)``.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mixweight.core.jsonio import MAX_INT_DIGITS, read_json, write_json_atomic, write_text_atomic
from mixweight.errors import MixweightError, brief

if TYPE_CHECKING:  # a type only: core sits below data (tests/test_layering.py)
    from mixweight.data.manifest import Manifest

SUM_TOLERANCE = 1e-3
MISSING_POLICIES = ("zero",)
# Written only when set: a plain weights file stays {domains, weights, ...} as before.
OPTIONAL_FIELDS = ("targets", "warnings", "replay", "missing", "compute")


@dataclass
class DomainWeights:
    domains: list[str]
    weights: list[float]
    last_weights: list[float] | None = None
    method: dict = field(default_factory=dict)
    trajectory: list[dict] = field(default_factory=list)
    provenance: dict = field(default_factory=dict)
    targets: list[str] = field(default_factory=list)
    warnings: list[dict] = field(default_factory=list)
    replay: dict = field(default_factory=dict)
    missing: str | None = None
    compute: dict = field(default_factory=dict)

    def as_dict(self) -> dict[str, float]:
        return dict(zip(self.domains, self.weights))

    def validate(self, where: str = "domain weights") -> None:
        """Distinct names, targets among them at weight 0, the other weights finite, >= 0, summing to 1."""
        _check_names(self.domains, where, "domains")
        _check_targets(self.targets, self.domains, self.weights, where)
        _validated_weights(self.weights, self.domains, where, self.targets)

    def write(self, path: str | Path) -> Path:
        self.validate(f"domain weights for {path}")
        data = asdict(self)
        for key in OPTIONAL_FIELDS:
            if not data[key]:
                del data[key]
        replay = data.pop("replay", None)
        if replay is None:
            return write_json_atomic(path, data)
        # One line per step in the replay arrays: 20k steps x 7 domains would be 280k lines indented.
        return write_text_atomic(path, _dumps_with_replay(data, replay))


def _dumps_with_replay(data: dict, replay: dict) -> str:
    """`data` as indented JSON with a last key "replay" whose per-step arrays hold one compact row per line."""
    items = []
    for key, value in replay.items():
        if isinstance(value, list) and value and all(isinstance(row, list) for row in value):
            rows = ",\n".join(f"      {json.dumps(row)}" for row in value)
            items.append(f"    {json.dumps(key)}: [\n{rows}\n    ]")
        else:
            items.append(f"    {json.dumps(key)}: {json.dumps(value)}")
    head = json.dumps(data, indent=2)
    assert head.endswith("\n}")
    return head[:-2] + ',\n  "replay": {\n' + ",\n".join(items) + "\n  }\n}\n"


def corpus_weights(corpus_domains: list[str], by_domain: dict[str, float]) -> list[float]:
    """`by_domain`'s weights in corpus order, 0.0 for the domains it does not name (held-out targets)."""
    unknown = [d for d in by_domain if d not in corpus_domains]
    if unknown:
        raise MixweightError(f"domain weights: {unknown} are not domains of the corpus {corpus_domains}")
    return [float(by_domain.get(d, 0.0)) for d in corpus_domains]


def check_output_file(path: str | Path, flag: str = "--out") -> Path:
    """`path` as a new file to write later: refused now (one line) if it exists, is a directory, lies inside a
    corpus or run, or cannot be written (`mixweight.core.outputs.check_output_path`)."""
    from mixweight.core.outputs import check_output_path

    return check_output_path(path, flag, kind="file", what="the file")


# --- validation ----------------------------------------------------------------------
def _check_names(names, where: str, key: str) -> list[str]:
    if not isinstance(names, list) or not all(isinstance(d, str) for d in names):
        raise MixweightError(f"{where}: '{key}' must be a list of domain names (strings), got {_short(names)}")
    if len(set(names)) != len(names):
        raise MixweightError(f"{where}: '{key}' must be distinct names, got {_short(names)}")
    return names


def _check_targets(targets, domains: list[str], values, where: str) -> list[str]:
    _check_names(targets, where, "targets")
    for name in targets:
        if name not in domains:
            raise MixweightError(f"{where}: target {name!r} is not one of the 'domains' {domains}")
        value = values[domains.index(name)] if isinstance(values, list) and len(values) == len(domains) else 0
        if value != 0:
            raise MixweightError(f"{where}: target {name!r} has weight {_short(value)}; held-out targets have weight 0")
    return targets


def _validated_weights(values, domains: list[str], where: str, targets=()) -> list[float]:
    if not isinstance(values, list):
        raise MixweightError(f"{where}: 'weights' must be a list of numbers, got {_short(values)}")
    if len(values) != len(domains):
        raise MixweightError(f"{where}: {len(values)} weights for {len(domains)} domains {domains}")
    out = []
    for domain, value in zip(domains, values):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise MixweightError(f"{where}: weight of {domain!r} is {_short(value)}, expected a number")
        value = float(value) if isinstance(value, float) or abs(value) < 10**MAX_INT_DIGITS else math.inf
        if not math.isfinite(value) or value < 0:
            raise MixweightError(f"{where}: weight of {domain!r} is {value}; weights must be finite and >= 0")
        out.append(value)
    total = sum(out)
    if abs(total - 1.0) > SUM_TOLERANCE:
        over = " (held-out targets are 0)" if targets else ""
        raise MixweightError(
            f"{where}: weights sum to {total:.6g}, not 1{over}; give proportions that sum to 1 "
            f"(sums within {SUM_TOLERANCE} of 1 are renormalized, larger gaps are refused as likely mistakes)"
        )
    return [v / total for v in out]


def shown(text) -> str:
    """A user's string for a one-line message: as is when printable, else its repr (no raw newlines)."""
    text = str(text)
    return text if text.isprintable() else repr(text)


def _short(value, limit: int = 80) -> str:
    return brief(value, limit)


def _mapping(raw: dict, key: str, where: str) -> dict:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise MixweightError(f"{where}: '{key}' must be a mapping (a JSON object), got {_short(value)}")
    return dict(value)


def _is_finite_number(value) -> bool:
    """A JSON number (not true/false) that is finite: what every weight, signal and loss of an artifact is."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer past float's range
        return False


def finite_number(value, where: str, field: str, positive: bool = False) -> float:
    """A method field read back from an artifact: a finite number (> 0 with `positive`), else one line naming
    the file (`where`) and the field."""
    if not _is_finite_number(value) or (positive and value <= 0):
        need = "a positive finite number" if positive else "a finite number"
        raise MixweightError(f"{where}: {field} is {_short(value)}, expected {need}")
    return float(value)


def number_mapping(value, where: str, field: str) -> dict:
    """A non-empty {domain: number} mapping read back from an artifact (the numbers are checked where read)."""
    if not isinstance(value, dict) or not value:
        raise MixweightError(f"{where}: {field} must be a non-empty {{domain: number}} mapping, got {_short(value)}")
    return value


def _list_of_maps(raw: dict, key: str, where: str) -> list[dict]:
    value = raw.get(key, [])
    if not isinstance(value, list) or not all(isinstance(e, dict) for e in value):
        raise MixweightError(f"{where}: '{key}' must be a list of JSON objects, got {_short(value)}")
    return [dict(e) for e in value]


def parse_domain_weights(raw, where: str) -> DomainWeights:
    if not isinstance(raw, dict) or "weights" not in raw:
        raise MixweightError(
            f"{where}: expected a JSON object with 'weights' (and 'domains'), "
            f"see docs/weights-methods.md; got {_short(raw, 60)}"
        )
    weights = raw["weights"]
    if isinstance(weights, dict):
        domains = list(weights)
        if "domains" in raw:
            given = _check_names(raw["domains"], where, "domains")
            if sorted(given) != sorted(domains):
                raise MixweightError(f"{where}: 'domains' {given} and the keys of 'weights' {domains} differ")
        values = list(weights.values())
    elif isinstance(weights, list):
        if "domains" not in raw:
            raise MixweightError(
                f"{where}: 'weights' is a list, so 'domains' (the names in the same order) is required"
            )
        domains, values = _check_names(raw["domains"], where, "domains"), weights
    else:
        raise MixweightError(f"{where}: 'weights' must be a list or a {{domain: weight}} map, got {_short(weights)}")
    _check_names(domains, where, "domains")
    targets = _check_targets(raw.get("targets", []), domains, values, where)
    missing = raw.get("missing")
    if missing is not None and missing not in MISSING_POLICIES:
        raise MixweightError(
            f"{where}: 'missing' must be \"zero\" (omitted corpus domains get weight 0), got {_short(missing)}"
        )
    last = raw.get("last_weights")
    if isinstance(last, dict):
        last = [last.get(d) for d in domains]
    if last is not None and (
        not isinstance(last, list)
        or len(last) != len(domains)
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in last)
    ):
        raise MixweightError(
            f"{where}: 'last_weights' must be {len(domains)} numbers in 'domains' order, "
            f"got {_short(raw.get('last_weights'))}"
        )
    return DomainWeights(
        domains=domains,
        weights=_validated_weights(values, domains, where, targets),
        last_weights=last,
        method=_mapping(raw, "method", where),
        trajectory=_list_of_maps(raw, "trajectory", where),
        provenance=_mapping(raw, "provenance", where),
        targets=targets,
        warnings=_list_of_maps(raw, "warnings", where),
        replay=_mapping(raw, "replay", where),
        missing=missing,
        compute=_mapping(raw, "compute", where),
    )


# --- the replay block ------------------------------------------------------------------
def _numbers(value, length: int, key: str, where: str, kind=(int, float)) -> None:
    valid = (lambda v: isinstance(v, bool)) if kind is bool else _is_finite_number
    if not isinstance(value, list) or len(value) != length or not all(valid(v) for v in value):
        what = "true/false values" if kind is bool else "finite numbers"
        raise MixweightError(f"{where}: 'replay.{key}' must be {length} {what}, got {_short(value)}")


def replay_arrays(
    artifact, method: str, params: tuple[str, ...] = (), vectors: tuple[str, ...] = ()
) -> tuple[dict, str]:
    """An artifact's ``replay`` block after checking its common shape (module docstring), and a `where` for errors.

    `artifact` is a DomainWeights or the loaded JSON dict; `params` are the method's scalar
    parameters that must be finite numbers; `vectors` its optional per-domain arrays (one
    finite number per replay domain when present). Per-step method arrays (DoGE's ``lr``) are the
    method's to check, with `replay_steps_array`.
    """
    raw = asdict(artifact) if isinstance(artifact, DomainWeights) else artifact
    where = f"{method} artifact"
    block = raw.get("replay") if isinstance(raw, dict) else None
    if not block:
        raise MixweightError(
            f"{where}: no 'replay' block (written by an older mixweight, or by hand); "
            "recompute the weights with this version to get a replayable artifact"
        )
    if not isinstance(block, dict):
        raise MixweightError(f"{where}: 'replay' must be a mapping, got {_short(block)}")
    domains = _check_names(block.get("domains"), where, "replay.domains")
    unknown = [d for d in domains if d not in raw.get("domains", domains)]
    if unknown:
        raise MixweightError(f"{where}: 'replay.domains' {unknown} are not in the artifact's 'domains'")
    steps = block.get("steps")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise MixweightError(f"{where}: 'replay.steps' must be an integer >= 0, got {_short(steps)}")
    k = len(domains)
    _numbers(block.get("initial_weights"), k, "initial_weights", where)
    for key, kind in (("signals", (int, float)), ("present", bool)):
        rows = block.get(key)
        if not isinstance(rows, list) or len(rows) != steps:
            raise MixweightError(f"{where}: 'replay.{key}' must hold one row per step ({steps}), got {_short(rows)}")
        for index, row in enumerate(rows):
            _numbers(row, k, f"{key}[{index}]", where, kind)
    start = block.get("average_start", 1)
    if start not in (0, 1) or isinstance(start, bool):
        raise MixweightError(f"{where}: 'replay.average_start' must be 0 or 1, got {_short(start)}")
    for name in vectors:
        if name in block:
            _numbers(block[name], k, name, where)
    for name in params:
        value = block.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise MixweightError(f"{where}: 'replay.{name}' must be a finite number, got {_short(value)}")
    return block, where


def replay_steps_array(block: dict, key: str, where: str) -> list[float]:
    """A method's per-step scalar array (e.g. DoGE's ``lr``): one finite number per step."""
    _numbers(block.get(key), block["steps"], key, where)
    return [float(v) for v in block[key]]


def is_file(path: str | Path) -> bool:
    """Path.is_file() that says False (not OSError) for names the OS refuses: too long, NUL bytes."""
    try:
        return Path(path).is_file()
    except (OSError, ValueError):
        return False


def load_domain_weights(path: str | Path) -> DomainWeights:
    path = Path(path)
    if not is_file(path):
        raise MixweightError(f"domain weights file {shown(path)}: not found")
    return parse_domain_weights(read_json(path), str(path))


def check_against_manifest(weights: DomainWeights, manifest: Manifest, where: str) -> dict[str, float]:
    """The weights in the corpus's domain order; names must match exactly (or `"missing": "zero"`)."""
    missing = [d for d in manifest.domains if d not in weights.domains]
    extra = [d for d in weights.domains if d not in manifest.domains]
    if extra or (missing and weights.missing != "zero"):
        hint = ' (to give them weight 0 on purpose, add "missing": "zero" to the file)' if missing and not extra else ""
        raise MixweightError(
            f"{where}: domains do not match the corpus; not in the corpus: {extra}, "
            f"missing for corpus domains: {missing} "
            f"(the corpus has {manifest.domains}){hint}"
        )
    if missing:
        warnings.warn(
            f'{where}: "missing": "zero": corpus domain(s) {missing} get weight 0 and are not sampled', stacklevel=2
        )
    theirs = weights.provenance.get("tokenizer_fingerprint")
    ours = manifest.tokenizer.get("fingerprint")
    if theirs and ours and theirs != ours:
        warnings.warn(
            f"{where}: weights were computed on a corpus tokenized with '{theirs}', this corpus uses '{ours}'; "
            "domain weights depend on the tokenizer",
            stacklevel=2,
        )
    by_name = weights.as_dict()
    return {d: by_name.get(d, 0.0) for d in manifest.domains}


def resolve_proportions(manifest: Manifest, spec: str) -> dict[str, float]:
    """Sampling proportions from `natural` (token counts), `uniform`, or a weights file."""
    if spec == "natural":
        return manifest.natural_weights()
    if spec == "uniform":
        return {d: 1.0 / len(manifest.domains) for d in manifest.domains}
    path = Path(spec)
    if not is_file(path):
        raise MixweightError(
            f"domain weights '{_short(spec)}': expected natural, uniform, or a domain_weights.json file"
        )
    return check_against_manifest(load_domain_weights(path), manifest, str(path))
