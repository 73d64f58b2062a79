"""`domain_weights.json`: domain weights with the story of how they were made.

Fields (see DESIGN.md): ``domains``, ``weights`` (final, sum 1), ``last_weights``,
``method`` (name and hyperparameters), ``trajectory`` (per logged step: step, weights,
and the per-domain signal that drove the update), ``provenance`` (seed, config hash,
proxy spec, tokenizer fingerprint, domain token counts, mixweight version).

A hand-written file with only ``domains`` and ``weights`` (a list in domain order, or a
``{domain: weight}`` map; then ``domains`` may be omitted) is valid input anywhere.

Weights that do not sum to 1: within 1e-3 of 1 they are renormalized (published
weights are rounded to two or three digits); further off they are refused, because
that is a mistake (percentages, a missing domain) that silent normalizing would hide.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mixweight.data.manifest import Manifest
from mixweight.errors import MixweightError
from mixweight.jsonio import write_json_atomic

SUM_TOLERANCE = 1e-3


@dataclass
class DomainWeights:
    domains: list[str]
    weights: list[float]
    last_weights: list[float] | None = None
    method: dict = field(default_factory=dict)
    trajectory: list[dict] = field(default_factory=list)
    provenance: dict = field(default_factory=dict)

    def as_dict(self) -> dict[str, float]:
        return dict(zip(self.domains, self.weights))

    def write(self, path: str | Path) -> Path:
        return write_json_atomic(path, asdict(self))


def _validated_weights(values, domains: list[str], where: str) -> list[float]:
    if len(values) != len(domains):
        raise MixweightError(f"{where}: {len(values)} weights for {len(domains)} domains {domains}")
    out = []
    for domain, value in zip(domains, values):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise MixweightError(f"{where}: weight of '{domain}' is {value!r}, expected a number")
        if not math.isfinite(value) or value < 0:
            raise MixweightError(f"{where}: weight of '{domain}' is {value}; weights must be finite and >= 0")
        out.append(float(value))
    total = sum(out)
    if abs(total - 1.0) > SUM_TOLERANCE:
        raise MixweightError(
            f"{where}: weights sum to {total:.6g}, not 1; give proportions that sum to 1 "
            f"(sums within {SUM_TOLERANCE} of 1 are renormalized, larger gaps are refused as likely mistakes)"
        )
    return [v / total for v in out]


def parse_domain_weights(raw, where: str) -> DomainWeights:
    if not isinstance(raw, dict) or "weights" not in raw:
        raise MixweightError(f"{where}: expected a JSON object with 'weights' (and 'domains'), see DESIGN.md")
    weights = raw["weights"]
    if isinstance(weights, dict):
        domains = list(weights)
        if "domains" in raw and sorted(raw["domains"]) != sorted(domains):
            raise MixweightError(f"{where}: 'domains' {raw['domains']} and the keys of 'weights' {domains} differ")
        values = list(weights.values())
    elif isinstance(weights, list):
        if "domains" not in raw:
            raise MixweightError(f"{where}: 'weights' is a list, so 'domains' (the names in the same order) is required")
        domains, values = list(raw["domains"]), weights
    else:
        raise MixweightError(f"{where}: 'weights' must be a list or a {{domain: weight}} map")
    if len(set(domains)) != len(domains) or not all(isinstance(d, str) for d in domains):
        raise MixweightError(f"{where}: 'domains' must be distinct names, got {domains}")
    last = raw.get("last_weights")
    return DomainWeights(
        domains=domains,
        weights=_validated_weights(values, domains, where),
        last_weights=list(last.values()) if isinstance(last, dict) else last,
        method=dict(raw.get("method", {})),
        trajectory=list(raw.get("trajectory", [])),
        provenance=dict(raw.get("provenance", {})),
    )


def load_domain_weights(path: str | Path) -> DomainWeights:
    path = Path(path)
    if not path.is_file():
        raise MixweightError(f"domain weights file {path}: not found")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise MixweightError(f"domain weights file {path}: not valid JSON ({exc})") from exc
    return parse_domain_weights(raw, str(path))


def check_against_manifest(weights: DomainWeights, manifest: Manifest, where: str) -> dict[str, float]:
    """The weights in the corpus's domain order; names must match exactly."""
    missing = [d for d in manifest.domains if d not in weights.domains]
    extra = [d for d in weights.domains if d not in manifest.domains]
    if missing or extra:
        raise MixweightError(
            f"{where}: domains do not match the corpus; not in the corpus: {extra}, missing for corpus domains: {missing} "
            f"(the corpus has {manifest.domains})"
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
    return {d: by_name[d] for d in manifest.domains}


def resolve_proportions(manifest: Manifest, spec: str) -> dict[str, float]:
    """Sampling proportions from `natural` (token counts), `uniform`, or a weights file."""
    if spec == "natural":
        return manifest.natural_weights()
    if spec == "uniform":
        return {d: 1.0 / len(manifest.domains) for d in manifest.domains}
    path = Path(spec)
    if not path.exists():
        raise MixweightError(f"domain weights '{spec}': expected natural, uniform, or a domain_weights.json file")
    return check_against_manifest(load_domain_weights(path), manifest, str(path))
