"""Domain weights in the formats other trainers take: llm-foundry streams, Megatron --data-path, plain JSON.

Registry of name -> pure function (DomainWeights -> str). Stream paths come from the
artifact's provenance (`corpus` and `stream_paths`, written by mixweight's weight runs);
a hand-written weights file has none, so a placeholder path marks where to fill them in.
Domains at weight 0 (held-out targets) are left out of the trainer formats, as mixweight's
own loader leaves them out; the JSON format keeps every domain.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar, Optional

import yaml

from mixweight.core.artifact import DomainWeights
from mixweight.core.config import option
from mixweight.errors import MixweightError

PLACEHOLDER_CORPUS = "/path/to/corpus"


def stream_paths(weights: DomainWeights) -> dict[str, str]:
    """Each domain's training stream: <corpus>/<manifest path>, or a placeholder when the corpus is unknown."""
    corpus = weights.provenance.get("corpus") or PLACEHOLDER_CORPUS
    known = weights.provenance.get("stream_paths") or {}
    return {d: f"{corpus.rstrip('/')}/{known.get(d, f'train/{d}')}" for d in weights.domains}


def _sampled(weights: DomainWeights) -> list[tuple[str, float]]:
    """Domains with weight > 0: a weight-0 domain (a held-out target) is left out, as mixweight's loader does."""
    return [(d, w) for d, w in zip(weights.domains, weights.weights) if w > 0]


def to_streams_yaml(weights: DomainWeights) -> str:
    paths = stream_paths(weights)
    streams = {d: {"local": paths[d], "proportion": w} for d, w in _sampled(weights)}
    header = (
        ""
        if weights.provenance.get("corpus")
        else f"# fill in the corpus location: {PLACEHOLDER_CORPUS} is a placeholder\n"
    )
    unsampled = [
        d + (" (held-out target)" if d in weights.targets else "")
        for d, w in zip(weights.domains, weights.weights)
        if w <= 0
    ]
    if unsampled:
        header += f"# not sampled (weight 0), so left out: {', '.join(unsampled)}\n"
    return header + yaml.safe_dump({"streams": streams}, sort_keys=False)


def to_megatron(weights: DomainWeights) -> str:
    paths = stream_paths(weights)
    return " ".join(f"{w!r} {paths[d]}" for d, w in _sampled(weights)) + "\n"


def to_json(weights: DomainWeights) -> str:
    return json.dumps(weights.as_dict(), indent=2) + "\n"


FORMATS = {"streams-yaml": to_streams_yaml, "megatron": to_megatron, "json": to_json}


@dataclass
class ExportConfig:
    """`mixweight weights export FILE --format F`."""

    COMMAND: ClassVar[str] = "weights export"

    file: Optional[str] = option(
        None,
        "a domain_weights.json: from weights doremi, doge or regmix, the RUN/domain_weights.json of an online "
        "mixing run (domain_weights online:odm|online:doremi), or hand-written",
        positional=True,
    )
    format: Optional[str] = option(
        None,
        "streams-yaml (llm-foundry streams with proportions), megatron (a --data-path list: weight path ...) or "
        "json ({domain: weight}); required, no default",
        required=True,
        choices=tuple(FORMATS),
    )
    token_budget: Optional[int] = option(
        None,
        "tokens the run will train on, T: prints each domain's planned epochs (w_d T / tokens_d) on stderr "
        "(default: none)",
    )
    max_epochs: Optional[float] = option(
        None,
        "move the weights within E passes over each domain's tokens in T (KL projection; needs --token-budget; "
        "default: none)",
    )
    data: Optional[str] = option(
        None, "corpus whose token counts --max-epochs uses (default: the file's provenance.domain_token_counts)"
    )


def export_weights(weights: DomainWeights, fmt: str) -> str:
    if fmt not in FORMATS:
        raise MixweightError(f"weights export: unknown format {fmt!r}; valid formats: {', '.join(FORMATS)}")
    return FORMATS[fmt](weights)


def cap_to_budget(
    weights: DomainWeights, token_budget: int | None, max_epochs: float | None, domain_tokens: dict | None = None
) -> tuple[DomainWeights, str | None]:
    """`weights` moved within `max_epochs` passes over each domain of a `token_budget`-token run (the KL
    projection of mixweight.sampling.repetition), and a line saying what moved (or the planned epochs).

    The domains' token counts come from `domain_tokens` (a corpus's manifest) or the file's
    provenance (`domain_token_counts`, written by the weights commands).
    """
    import dataclasses

    from mixweight.sampling.repetition import planned_epochs, project_max_epochs

    if token_budget is None and max_epochs is None:
        return weights, None
    if token_budget is None:
        raise MixweightError(
            "weights export: --max-epochs needs --token-budget T (the tokens the run will train on: "
            "steps x global batch x seq_len)"
        )
    if not token_budget > 0:
        raise MixweightError(f"weights export: --token-budget must be a positive number of tokens, got {token_budget}")
    tokens = domain_tokens or weights.provenance.get("domain_token_counts")
    missing = [d for d in weights.domains if not isinstance(tokens, dict) or not isinstance(tokens.get(d), int)]
    if missing:
        raise MixweightError(
            f"weights export: the file's provenance has no domain_token_counts for {missing} (the weights commands "
            "write them); pass --data CORPUS to take them from the corpus's manifest"
        )
    if max_epochs is None:
        epochs = planned_epochs(weights.as_dict(), tokens, token_budget)
        return weights, "planned epochs over {:,} tokens: {}".format(
            token_budget, ", ".join(f"{d} {e:.3g}" for d, e in epochs.items())
        )
    projection = project_max_epochs(
        list(weights.domains),
        list(weights.weights),
        [tokens[d] for d in weights.domains],
        max_epochs,
        token_budget,
        "weights export: --max-epochs",
    )
    return dataclasses.replace(weights, weights=projection.after), projection.summary()
