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
from mixweight.errors import MixweightError, brief

PLACEHOLDER_CORPUS = "/path/to/corpus"


def stream_paths(weights: DomainWeights, where: str = "weights file") -> dict[str, str]:
    """Each domain's training stream: <corpus>/<manifest path>, or a placeholder when the corpus is unknown.
    The provenance's paths are checked first: strings, no control characters (`check_paths`)."""
    corpus = weights.provenance.get("corpus") or PLACEHOLDER_CORPUS
    known = weights.provenance.get("stream_paths") or {}
    check_paths(corpus, known, where)
    return {d: f"{corpus.rstrip('/')}/{known.get(d, f'train/{d}')}" for d in weights.domains}


def check_paths(corpus, known, where: str) -> None:
    """provenance.corpus a path and provenance.stream_paths a {domain: path} map, with no control characters (a
    newline would split the exported file's lines): else one line naming the field."""
    if not isinstance(corpus, str):
        raise MixweightError(f"{where}: provenance.corpus must be a path (a string), got {brief(corpus)}")
    if not isinstance(known, dict) or not all(isinstance(v, str) for v in known.values()):
        raise MixweightError(
            f"{where}: provenance.stream_paths must map domains to paths (strings), got {brief(known)}"
        )
    for field, value in [("corpus", corpus), *((f"stream_paths.{d}", v) for d, v in known.items())]:
        if not value.isprintable():
            raise MixweightError(
                f"{where}: provenance.{field} is {brief(value)}, which holds control characters (a newline, a tab); "
                "it would break the exported lines: edit the file's provenance, or export on a corpus path without them"
            )


def _check_megatron_paths(paths: dict[str, str], where: str) -> None:
    """Megatron's --data-path is a whitespace-separated list: a path with a space cannot be written into it."""
    for domain, path in paths.items():
        if any(c.isspace() for c in path):
            raise MixweightError(
                f"{where}: the stream path of '{domain}', {brief(path)}, holds whitespace, and Megatron's --data-path "
                "is a whitespace-separated list: move (or link) the corpus to a path without spaces and set "
                "provenance.corpus to it"
            )


def _sampled(weights: DomainWeights) -> list[tuple[str, float]]:
    """Domains with weight > 0: a weight-0 domain (a held-out target) is left out, as mixweight's loader does."""
    return [(d, w) for d, w in zip(weights.domains, weights.weights) if w > 0]


def to_streams_yaml(weights: DomainWeights, where: str = "weights file") -> str:
    paths = stream_paths(weights, where)
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


def to_megatron(weights: DomainWeights, where: str = "weights file") -> str:
    paths = stream_paths(weights, where)
    _check_megatron_paths({d: paths[d] for d, _ in _sampled(weights)}, where)
    return " ".join(f"{w!r} {paths[d]}" for d, w in _sampled(weights)) + "\n"


def to_json(weights: DomainWeights, where: str = "weights file") -> str:
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


def export_weights(weights: DomainWeights, fmt: str, where: str = "weights file") -> str:
    """`weights` in format `fmt`; `where` (the file) starts the messages of a provenance that cannot be exported."""
    if fmt not in FORMATS:
        raise MixweightError(f"weights export: unknown format {fmt!r}; valid formats: {', '.join(FORMATS)}")
    return FORMATS[fmt](weights, where)


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


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
    if not isinstance(tokens, dict):
        tokens = {}
    missing = [d for d in weights.domains if d not in tokens]
    if missing:
        raise MixweightError(
            f"weights export: the file's provenance has no domain_token_counts for {missing} (the weights commands "
            "write them); pass --data CORPUS to take them from the corpus's manifest"
        )
    bad = {d: tokens[d] for d in weights.domains if not _is_count(tokens[d])}
    if bad:
        domain, value = next(iter(bad.items()))
        raise MixweightError(
            f"weights export: the file's provenance.domain_token_counts.{domain} is {brief(value)}, not a positive "
            "number of tokens (edited by hand?); pass --data CORPUS to take the counts from the corpus's manifest"
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
