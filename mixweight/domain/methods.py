"""The weights methods: one entry each, and every consumer iterates them.

A `WeightsMethod` holds what the rest of mixweight needs to know about a method:

    name            `mixweight weights NAME`, the pipeline's `NAME:` section, an arm's
                    `domain_weights: NAME`, and the artifact's `method.name`
    config, run     its typed config (a ProxyMethodConfig: options + a train block) and
                    run(config) -> DomainWeights, which writes the artifact
    verify          verify(weights, path, tolerance) -> one line, for `weights verify`
                    (None: the method's artifacts cannot be checked from the file alone)
    cost            proxy optimizer steps the method trains, for the pipeline's ETA
    check_corpus    checks that need the corpus, run by the pipeline before any stage trains
    reference_run   where the method leaves a reference run in its work directory, for an
                    online arm that reads it (DoReMi's round-0 reference; None otherwise)
    report_figure   report_figure(method record, path, title) -> (heading, caption) after drawing
                    the figure the report shows beside the method's weights (RegMix: its fit), or
                    None when the record has nothing to draw

The CLI's `weights` subcommands, the pipeline's sections and stages and `weights verify` read
this registry; docs/design.md ("Adding a weights method") shows a new method added with one
`register` call. Record names for the experiment trackers belong to the method's step objective
(`mixweight.core.tracker_names.register_record_names`, called where the objective is defined).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from mixweight.core.artifact import DomainWeights
from mixweight.core.plugins import load_plugins
from mixweight.data.manifest import Manifest
from mixweight.domain.proxy import ProxyMethodConfig
from mixweight.errors import MixweightError
from mixweight.train.mixers import PREFIX as ONLINE_PREFIX
from mixweight.train.mixers import mixers


def _no_corpus_checks(config, manifest: Manifest) -> None:
    """A method whose options need no corpus to be checked."""


@dataclass(frozen=True)
class WeightsMethod:
    name: str
    help: str  # one line for `mixweight weights --help`
    config: type[ProxyMethodConfig]
    run: Callable[[ProxyMethodConfig], DomainWeights]
    verify: Optional[Callable[[DomainWeights, str, float], str]] = None
    cost: Callable[[ProxyMethodConfig], int] = lambda config: config.steps
    check_corpus: Callable[[ProxyMethodConfig, Manifest], None] = _no_corpus_checks
    reference_run: Optional[Callable[[ProxyMethodConfig, Path], Path]] = None
    report_figure: Optional[Callable[[dict, Path, str], Optional[tuple[str, str]]]] = None


_METHODS: dict[str, WeightsMethod] = {}
PLUGIN_GROUP = "mixweight.methods"  # an installed package's entry points in this group register their methods
_plugins_loaded = False


def register(method: WeightsMethod) -> WeightsMethod:
    """Add a method (a plug-in module calls this on import); a name is registered once."""
    if method.name in _METHODS and _METHODS[method.name] is not method:
        raise ValueError(f"weights method {method.name!r} is already registered")
    _METHODS[method.name] = method
    return method


def _load_plugins() -> None:
    """Import the modules installed packages name in the `mixweight.methods` entry-point group (once)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    load_plugins(PLUGIN_GROUP, "weights method")


def methods() -> dict[str, WeightsMethod]:
    """Every registered method, by name, in registration order (the built-in ones first, then plug-ins)."""
    _load_plugins()
    return dict(_METHODS)


def get_method(name: str, where: str = "weights") -> WeightsMethod:
    _load_plugins()
    if name not in _METHODS:
        raise MixweightError(f"{where}: unknown weights method {name!r}; methods: {', '.join(_METHODS)}")
    return _METHODS[name]


# --- the built-in methods -------------------------------------------------------------------------------------
def _regmix_fit_figure(method: dict, path: Path, title: str) -> Optional[tuple[str, str]]:
    """The swarm's held-out predicted vs observed target loss: the fit the weights rest on."""
    from mixweight.domain.plots import plot_regmix_fit

    if plot_regmix_fit(method, path, title=title, size=4.5) is None:
        return None
    fit = method["fit"]["cross_validation"]
    return "the swarm's fit", (
        f"Held-out ({fit['method']}) predicted against observed target loss, one point per swarm run: "
        f"Spearman {fit['spearman']:.3f}, mean absolute error {fit['mae']:.4f}."
    )


def _builtins() -> None:
    from mixweight.domain import doge_run, doremi_run, regmix_run, verify

    register(
        WeightsMethod(
            name="doremi",
            help="doremi domain weights from a proxy model",
            config=doremi_run.DoReMiConfig,
            run=doremi_run.run_doremi,
            verify=verify.replayed("mixweight.domain.doremi"),
            cost=lambda config: config.steps * 2 * config.rounds,  # a reference and a proxy per round
            reference_run=lambda config, work_dir: (
                Path(config.reference) if config.reference else work_dir / "round-0" / "reference"
            ),
        )
    )
    register(
        WeightsMethod(
            name="doge",
            help="doge domain weights from a proxy model",
            config=doge_run.DoGEConfig,
            run=doge_run.run_doge,
            verify=verify.replayed("mixweight.domain.doge"),
            cost=lambda config: config.steps * 3,  # a DoGE step costs about three plain ones
            check_corpus=lambda config, manifest: doge_run.check_targets(
                config.targets(manifest.domains), manifest.domains
            ),
        )
    )
    register(
        WeightsMethod(
            name="regmix",
            help="regmix domain weights from a swarm of small proxy runs and a regression",
            config=regmix_run.RegMixConfig,
            run=regmix_run.run_regmix,
            verify=verify.refitted,
            cost=lambda config: 0 if config.swarm_table else config.steps * config.runs,  # a run per swarm member
            check_corpus=regmix_run.check_swarm,
            report_figure=_regmix_fit_figure,
        )
    )


_builtins()


def verify_file(path, tolerance: float = 1e-6) -> str:
    """`mixweight weights verify FILE`: one line saying the weights follow from what the file records; a
    MixweightError (one line) when they do not, or when its method has no check."""
    from mixweight.core.artifact import load_domain_weights, shown

    if not (tolerance >= 0):
        raise MixweightError(f"weights verify: --tolerance must be >= 0, got {tolerance}")
    weights = load_domain_weights(path)
    name = weights.method.get("name")
    if isinstance(name, str) and name.startswith(ONLINE_PREFIX):  # an online run's RUN/domain_weights.json
        from mixweight.domain.online_verify import verify_online

        return verify_online(weights, path, f"weights file {shown(path)}", tolerance)
    _load_plugins()
    method = _METHODS.get(name) if isinstance(name, str) else None
    if method is None or method.verify is None:
        checked = ", ".join(
            [*(n for n, m in _METHODS.items() if m.verify is not None), *(ONLINE_PREFIX + n for n in mixers())]
        )
        raise MixweightError(
            f"weights file {shown(path)}: 'method.name' is {name!r}; weights verify checks {checked} artifacts"
        )
    return method.verify(weights, path, tolerance)
