"""Repetition-aware mixtures: cap how many times a token budget repeats each domain.

A run of T tokens sampling domain d with weight w_d reads w_d * T tokens of it, so it goes
through the domain's tokens_d training tokens

    epochs_d = w_d * T / tokens_d

times. A cap of E epochs per domain is the set {w in the simplex : w_d <= u_d} with
u_d = E * tokens_d / T. `project_max_epochs` moves any weights onto that set by the KL
projection (docs/algorithms.md section 5.2)

    v = argmin_{v in the simplex, v <= u} KL(v || w)  =  min(u_d, s * w_d),  s >= 1 with sum_d v_d = 1,

found by scaling the uncapped domains, clipping the capped ones and repeating until no domain
crosses its cap (at most one round per domain; the same rule as the sample-weight cap of
section 1.5). A domain at weight 0 stays at 0, so the cap is reachable only when the domains
with weight > 0 can hold the whole budget: sum_{w_d > 0} u_d >= 1; otherwise the projection is
refused with the numbers. Pure functions of numbers and names: no corpus, no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from mixweight.errors import MixweightError

# A domain counts as capped (and is reported) when its weight moved by more than this.
MOVED = 1e-12


@dataclass
class Projection:
    """The outcome of `project_max_epochs`; `as_dict()` is what runs and artifacts record."""

    max_epochs: float
    token_budget: float
    domains: list[str]
    before: list[float]
    after: list[float]
    caps: list[float]  # u_d = E * tokens_d / T
    tokens: list[int]
    capped: list[str] = field(default_factory=list)

    def epochs(self, weights: list[float]) -> list[float]:
        return list(planned_epochs(dict(enumerate(weights)), dict(enumerate(self.tokens)), self.token_budget).values())

    @property
    def changed(self) -> bool:
        return bool(self.capped)

    def moves(self) -> list[dict]:
        """Per domain whose weight changed: weight and epochs before and after."""
        out = []
        rows = zip(self.domains, self.before, self.after, self.epochs(self.before), self.epochs(self.after))
        for d, b, a, eb, ea in rows:
            if abs(a - b) > MOVED:
                out.append(
                    {"domain": d, "weight_before": b, "weight_after": a, "epochs_before": eb, "epochs_after": ea}
                )
        return out

    def summary(self) -> str:
        """One line: what moved and by how much (or that nothing did)."""
        head = f"max_epochs {self.max_epochs:g} over a budget of {self.token_budget:,.0f} tokens"
        if not self.changed:
            worst = max(self.epochs(self.before), default=0.0)
            return f"{head}: no domain over the cap (at most {worst:.3g} epochs); weights unchanged"
        capped = ", ".join(
            f"{m['domain']} {m['weight_before']:.4f}->{m['weight_after']:.4f} "
            f"({m['epochs_before']:.3g}->{m['epochs_after']:.3g} epochs)"
            for m in self.moves()
            if m["domain"] in self.capped
        )
        scaled = [m for m in self.moves() if m["domain"] not in self.capped]
        rest = f"; the other {len(scaled)} domain(s) scaled up x{self._scale():.4g}" if scaled else ""
        return f"{head}: capped {capped}{rest}"

    def _scale(self) -> float:
        for d, b, a in zip(self.domains, self.before, self.after):
            if d not in self.capped and b > 0:
                return a / b
        return 1.0

    def as_dict(self) -> dict:
        return {
            "max_epochs": self.max_epochs,
            "token_budget": self.token_budget,
            "domain_tokens": dict(zip(self.domains, self.tokens)),
            "caps": dict(zip(self.domains, self.caps)),
            "weights_before": dict(zip(self.domains, self.before)),
            "weights_after": dict(zip(self.domains, self.after)),
            "epochs_before": dict(zip(self.domains, self.epochs(self.before))),
            "epochs_after": dict(zip(self.domains, self.epochs(self.after))),
            "capped": list(self.capped),
        }


def planned_epochs(weights: dict[str, float], domain_tokens: dict[str, int], token_budget: float) -> dict[str, float]:
    """epochs_d = w_d * T / tokens_d for every domain of `weights`."""
    out = {}
    for d, w in weights.items():
        tokens = domain_tokens.get(d, 0)
        out[d] = w * token_budget / tokens if tokens > 0 else (math.inf if w > 0 else 0.0)
    return out


def epoch_caps(domain_tokens: list[int], max_epochs: float, token_budget: float) -> list[float]:
    """u_d = E * tokens_d / T, the largest weight that keeps domain d within E epochs."""
    return [max_epochs * t / token_budget for t in domain_tokens]


def check_max_epochs(max_epochs: float, where: str) -> None:
    if isinstance(max_epochs, bool) or not isinstance(max_epochs, (int, float)) or not max_epochs > 0:
        raise MixweightError(f"{where}: 'max_epochs' must be a number > 0 (epochs per domain), got {max_epochs!r}")
    if not math.isfinite(max_epochs):
        raise MixweightError(f"{where}: 'max_epochs' must be finite, got {max_epochs!r}")


def project_max_epochs(
    domains: list[str],
    weights: list[float],
    domain_tokens: list[int],
    max_epochs: float,
    token_budget: float,
    where: str = "max_epochs",
) -> Projection:
    """The KL projection of `weights` onto {w : w_d <= max_epochs * tokens_d / token_budget} (module docstring).

    Refuses (MixweightError, with the numbers) a budget that the domains with weight > 0 cannot hold
    within `max_epochs` epochs each.
    """
    check_max_epochs(max_epochs, where)
    if not (token_budget > 0 and math.isfinite(token_budget)):
        raise MixweightError(f"{where}: the token budget must be a number > 0, got {token_budget!r}")
    if not (len(domains) == len(weights) == len(domain_tokens)) or not domains:
        raise MixweightError(f"{where}: {len(domains)} domains, {len(weights)} weights, {len(domain_tokens)} counts")
    total = sum(weights)
    if not total > 0:
        raise MixweightError(f"{where}: every weight is 0, nothing to project")
    w = [float(x) / total for x in weights]
    caps = epoch_caps(domain_tokens, max_epochs, token_budget)
    support = [i for i, x in enumerate(w) if x > 0]
    room = sum(caps[i] for i in support)
    if room < 1 - 1e-12:
        every = sum(caps)
        needed = token_budget / max(sum(domain_tokens[i] for i in support), 1)
        scope = "the domains" if len(support) == len(w) else f"the {len(support)} domains with weight > 0"
        extra = (
            f" (all {len(w)} domains together could hold {every:.4g} of it: give the others weight > 0)"
            if every >= 1 > room
            else ""
        )
        raise MixweightError(
            f"{where}: no mixture fits a budget of {token_budget:,.0f} tokens within {max_epochs:g} epochs per domain: "
            f"{scope} hold {sum(domain_tokens[i] for i in support):,} tokens, so at most {room:.4g} of the budget "
            f"(sum_d max_epochs * tokens_d / T < 1){extra}; raise max_epochs to at least {needed:.4g}, "
            "or lower the budget (steps, batch size)"
        )
    capped: set[int] = set()
    while True:
        free = [i for i in support if i not in capped]
        left = 1.0 - sum(caps[i] for i in capped)
        mass = sum(w[i] for i in free)
        scale = left / mass if mass > 0 else 0.0
        over = [i for i in free if scale * w[i] > caps[i]]
        if not over:
            break
        capped.update(over)
    after = [0.0] * len(w)
    for i in support:
        after[i] = caps[i] if i in capped else scale * w[i]
    total_after = sum(after)
    after = [x / total_after for x in after]  # rounding only: the sum is 1 by construction
    return Projection(
        max_epochs=float(max_epochs),
        token_budget=float(token_budget),
        domains=list(domains),
        before=w,
        after=after,
        caps=caps,
        tokens=[int(t) for t in domain_tokens],
        capped=[domains[i] for i in sorted(capped) if abs(after[i] - w[i]) > MOVED],
    )


# --- a training run's phases ------------------------------------------------------------------
REPETITION_FILE = "repetition.json"


def cap_phases(phases: list, manifest, max_epochs: float | None, steps: int, token_budget: int) -> tuple[list, dict]:
    """Every phase's weights projected within `max_epochs` (None: unchanged), and the run's repetition record.

    Each phase is capped as if it held for the whole run (T = `token_budget`, the run's tokens), so
    no phase alone can take a domain past the cap. The record holds the budget, each phase's
    projection (when capped), and the planned epochs per domain over the run: the sum over phases
    of w_d x (the phase's share of the steps) x T / tokens_d.
    """
    from mixweight.sampling.schedule import Phase

    domains = list(manifest.domains)
    tokens = manifest.train_tokens()
    out, projections = [], []
    for index, phase in enumerate(phases):
        if max_epochs is None:
            out.append(phase)
            continue
        projection = project_max_epochs(
            domains,
            [phase.weights[d] for d in domains],
            [tokens[d] for d in domains],
            max_epochs,
            token_budget,
            f"train: --max-epochs (phase {index}, from step {phase.start_step})"
            if len(phases) > 1
            else "train: --max-epochs",
        )
        projections.append({"phase": index, "start_step": phase.start_step, **projection.as_dict()})
        out.append(Phase(phase.start_step, dict(zip(domains, projection.after))) if projection.changed else phase)
    epochs = dict.fromkeys(domains, 0.0)
    for index, phase in enumerate(out):
        end = out[index + 1].start_step if index + 1 < len(out) else steps
        share = max(min(end, steps) - phase.start_step, 0) / steps
        for d, value in planned_epochs(phase.weights, tokens, token_budget).items():
            epochs[d] += share * value
    record = {
        "token_budget": token_budget,
        "max_epochs": max_epochs,
        "domain_tokens": {d: tokens[d] for d in domains},
        "planned_epochs": epochs,
        "phases": projections,
    }
    return out, record


def write_repetition(run_dir, record: dict) -> None:
    """Main process: RUN/repetition.json, and one line per phase whose weights the cap moved."""
    from pathlib import Path

    from mixweight.core.jsonio import write_json_atomic

    for entry in record.get("phases", []):
        if entry["capped"]:
            where = f" (phase {entry['phase']}, from step {entry['start_step']})" if len(record["phases"]) > 1 else ""
            moved = ", ".join(
                f"{d} {entry['weights_before'][d]:.4f}->{entry['weights_after'][d]:.4f} "
                f"({entry['epochs_before'][d]:.3g}->{entry['epochs_after'][d]:.3g} epochs)"
                for d in entry["capped"]
            )
            print(
                f"mixweight train: --max-epochs {record['max_epochs']:g}{where}: capped {moved} over "
                f"{record['token_budget']:,} tokens; the other domains scaled up",
                flush=True,
            )
    write_json_atomic(Path(run_dir) / REPETITION_FILE, record)
