"""Tracker names: one metrics.jsonl record -> (step, scalars, histograms) under the names the README lists.

`flatten` is the one place a tracker name is made; every backend (mixweight.core.tracker_backends) logs
what it returns. A step objective's own record key is named by the function it registers
(`register_record_names`, called where the objective is defined), so this module names no method.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class Histogram:
    edges: list[float]  # finite: the open last bin is closed at the step's largest value
    counts: list[int]
    minimum: float
    maximum: float
    total: float
    sum_squares: float


# Per-domain fields of a step record: field -> name, {d} the domain.
STEP_DOMAIN_NAMES = {
    "loss": "train/{d}/loss",
    "share": "train/{d}/share",
    "weight_x_n": "sample_weights/{d}/weight_x_n",
}
MIXTURE_NAMES = {"target": "mixture/{d}/target", "achieved": "mixture/{d}/achieved", "samples": "mixture/{d}/samples"}


def _number(value) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    return None  # strings (worst_domain), None (a DoGE score of an absent domain), lists


def _leaves(prefix: str, value, out: dict[str, float]) -> None:
    """Every number under `value`, named prefix/key/key...; the rule for fields without their own rule."""
    if isinstance(value, dict):
        for key, inner in value.items():
            _leaves(f"{prefix}/{key}", inner, out)
    elif (number := _number(value)) is not None:
        out[prefix] = number


def _per_domain(table: dict, prefix: str, names: dict[str, str], out: dict[str, float]) -> None:
    """{domain: {field: number}} -> names[field] with the domain filled in, else prefix/<domain>/<field>."""
    for domain, fields in table.items():
        for key, value in fields.items():
            if (number := _number(value)) is not None:
                # replace, not format: a domain name may hold "{"
                out[names.get(key, prefix + "/{d}/" + key).replace("{d}", domain)] = number


def _histogram(weights: dict) -> Histogram | None:
    raw = weights.get("histogram_x_n")
    if not raw:
        return None
    counts = [int(c) for c in raw["counts"]]
    edges = [float(e) for e in raw["edges"]]
    n = sum(counts)
    maximum = float(weights.get("max_weight_x_n", edges[-2]))
    if not math.isfinite(edges[-1]):
        edges[-1] = max(maximum, edges[-2] + 1.0)
    first = next((i for i, c in enumerate(counts) if c), 0)
    ess = float(weights.get("ess_fraction") or 0.0)
    # N*w sums to N (the weights sum to 1) and sum (N*w)^2 = N^2 sum w^2 = N / ess_fraction: exact from the stats.
    return Histogram(edges, counts, edges[first], maximum, float(n), n / ess if ess > 0 else 0.0)


# A step objective's own record key -> its tracker names ({name: value}); registered where the objective is
# defined (DoReMi's `domain_weights` and `excess_loss`, DoGE's `doge`), so this module names no method.
RECORD_NAMES: dict[str, Callable[[Any], dict[str, Any]]] = {}
RENAMED_RECORD_KEYS = {"objective": "weighted_loss"}  # metrics.jsonl keys of older runs -> their names now


def register_record_names(key: str, names: Callable[[Any], dict[str, Any]]) -> None:
    """Name the numbers of a metrics record's `key` for the trackers (unregistered keys go under train/KEY/...)."""
    RECORD_NAMES[key] = names


def flatten(record: dict) -> tuple[int, dict[str, float], dict[str, Histogram]]:
    """(step, scalars, histograms) of one metrics.jsonl record, under the names the README lists."""
    scalars: dict[str, float] = {}
    histograms: dict[str, Histogram] = {}
    for key, value in record.items():
        if key == "step":
            continue
        key = RENAMED_RECORD_KEYS.get(key, key)
        if key == "eval":
            _per_domain(value.get("domains", {}), "eval", {}, scalars)
            for name, inner in value.items():
                if name != "domains" and (number := _number(inner)) is not None:
                    scalars[f"eval/{name}"] = number
        elif key == "weights":
            for name, inner in value.items():
                if (number := _number(inner)) is not None:
                    scalars[f"sample_weights/{name}"] = number
            if (histogram := _histogram(value)) is not None:
                histograms["sample_weights/histogram_x_n"] = histogram
        elif key == "domains":
            _per_domain(value, "train", STEP_DOMAIN_NAMES, scalars)
        elif key == "mixture":
            scalars["mixture/phase"] = float(value.get("phase", 0))
            _per_domain(value.get("domains", {}), "mixture", MIXTURE_NAMES, scalars)
        elif key == "time":
            _leaves("train", value, scalars)
        elif key in RECORD_NAMES:
            for name, inner in RECORD_NAMES[key](value).items():
                if (number := _number(inner)) is not None:
                    scalars[name] = number
        else:
            _leaves(f"train/{key}", value, scalars)
    return int(record["step"]), scalars, histograms
