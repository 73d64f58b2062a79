"""From a swarm table to the artifact: fit the target loss on the mixtures, find the best mixture, write it.

    Swarm (each run's mixture over the training domains, its losses) + the options
      -> fit (`regmix.make_regressor`), in-sample and held-out (leave-one-out / K-fold) Spearman and MAE
      -> the mixture of lowest predicted target loss (`regmix.optimise`: within the caps, pulled toward
         the prior by kl_reg), in the artifact's domain order
      -> DomainWeights: method = the caller's record of how the swarm was made + the fit's record
         (regressor, kl_reg, caps, predicted losses, the fit, the swarm table that `weights verify` refits),
         the `small-swarm` / `poor-fit` warnings; the main process prints one summary line and writes it
         with two plots (`<stem>_fit.png`, `<stem>_bars.png`).

Every process may call `fit_swarm` (cheap, deterministic); only the main one prints and writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mixweight.core.artifact import DomainWeights, corpus_weights
from mixweight.core.distributed import is_main_process
from mixweight.domain import regmix
from mixweight.sampling.repetition import planned_epochs, project_max_epochs

POOR_FIT_SPEARMAN = 0.5  # below this held-out rank correlation, the artifact warns that the fit ranks poorly


@dataclass
class Swarm:
    """A finished swarm, as the fit reads it. `x` [K, m] holds the mixtures over `train_domains`; run i's
    `runs[i]` is {"run": its index, "weights": {domain: w} over `domains`, "losses": {domain: loss}} with a
    finite loss for every one of `target_domains`."""

    domains: list[str]  # every domain the artifact names, in its order
    train_domains: list[str]
    target_domains: list[str]
    x: np.ndarray
    runs: list[dict]

    def y(self) -> np.ndarray:
        return np.array([[run["losses"][d] for d in self.target_domains] for run in self.runs], dtype=np.float64)


def fit_options(config, regressor: str) -> dict:
    """How a law is fitted (make_regressor's keywords), as the artifact's fit block records them."""
    if regressor not in regmix.LAWS:
        return {}
    return {"loss": config.fit_loss, "delta": config.huber_delta}


def fit_block(regressor: str, seed: int, model, x: np.ndarray, y: np.ndarray, target_domains: list[str], fit) -> dict:
    observed = y.mean(axis=1)
    in_sample = regmix.fit_statistics(model.predict(x), observed)
    held_out = regmix.cross_validate(regressor, x, y, seed, **fit)
    block = {"regressor": regressor}
    if fit:  # an artifact without these keys was fitted by least squares with c <= min(y) (verify.py)
        block["loss"] = fit["loss"]
        if fit["loss"] == "huber":
            block["huber_delta"] = fit["delta"]
    block.update(target_domains=target_domains, in_sample=in_sample, cross_validation=held_out)
    if isinstance(model, regmix.LogLinear):
        block["laws"] = model.params
    return block


def fit_swarm(config, swarm: Swarm, prior: np.ndarray, caps: np.ndarray | None, record: dict) -> DomainWeights:
    """The fitted and optimised weights; `record` (how the swarm was made) starts the artifact's method block.
    `config` holds the fit's options (regressor, seed, kl_reg, token_budget, max_epochs, runs)."""
    x, y = swarm.x, swarm.y()
    regressor = regmix.resolve_regressor(config.regressor, len(x), len(swarm.train_domains))
    options = fit_options(config, regressor)
    model = regmix.make_regressor(regressor, config.seed, **options).fit(x, y)
    fit = fit_block(regressor, config.seed, model, x, y, swarm.target_domains, options)
    best_observed = int(np.argmin(y.mean(axis=1)))
    chosen = regmix.optimise(model, prior, caps=caps, kl_reg=config.kl_reg, seed=config.seed, starts=x[best_observed])
    weights = corpus_weights(swarm.domains, dict(zip(swarm.train_domains, chosen.tolist())))
    predicted = {
        "chosen": float(model.predict(chosen)[0]),
        "prior": float(model.predict(prior)[0]),
        "best_swarm_run": float(model.predict(x[best_observed])[0]),
    }
    named = swarm.domains + [t for t in swarm.target_domains if t not in swarm.domains]  # targets: metrics too
    table = [
        {
            "run": run["run"],
            "weights": run["weights"],
            "losses": {d: run["losses"][d] for d in named if d in run["losses"]},
            "target_loss": float(y[i].mean()),
        }
        for i, run in enumerate(swarm.runs)
    ]
    method = {
        **record,
        "regressor": config.regressor,
        "kl_reg": config.kl_reg,
        "token_budget": config.token_budget,
        "max_epochs": config.max_epochs,
        "predicted_target_loss": predicted,
        "best_swarm_run": {"run": swarm.runs[best_observed]["run"], "target_loss": float(y[best_observed].mean())},
        "fit": fit,
        "swarm": table,
    }
    result = DomainWeights(domains=swarm.domains, weights=weights, last_weights=None, method=method)
    result.warnings = fit_warnings(config, fit, len(swarm.train_domains), swarm.target_domains, runs=len(swarm.runs))
    if is_main_process():
        cv = fit["cross_validation"]
        name = f"{regressor} (auto)" if config.regressor == "auto" else regressor
        print(
            f"mixweight regmix: {name} fit over {len(swarm.runs)} runs: {cv['method']} Spearman "
            f"{cv['spearman']:.3f}, mean absolute error {cv['mae']:.4f} (in-sample Spearman "
            f"{fit['in_sample']['spearman']:.3f}, MAE {fit['in_sample']['mae']:.4f}); predicted target loss: "
            f"chosen {predicted['chosen']:.4f}, prior {predicted['prior']:.4f}, best swarm run "
            f"{predicted['best_swarm_run']:.4f} (observed {y[best_observed].mean():.4f})",
            flush=True,
        )
    return result


def repetition_block(config, domains: list[str], tokens: dict[str, int], weights: list[float]) -> dict | None:
    """The chosen mixture's planned epochs per domain in a token_budget-token run (and what max_epochs moved)."""
    if config.token_budget is None:
        return None
    if config.max_epochs is None:
        epochs = planned_epochs(dict(zip(domains, weights)), tokens, config.token_budget)
        return {"token_budget": config.token_budget, "max_epochs": None, "epochs": epochs}
    projection = project_max_epochs(
        list(domains),
        weights,
        [tokens[d] for d in domains],
        config.max_epochs,
        config.token_budget,
        "weights regmix",
    )
    return projection.as_dict()


def fit_warnings(
    config, fit: dict, train_domains: int, target_domains: list[str], runs: int | None = None
) -> list[dict]:
    """`small-swarm` (a law fitted with fewer than RUNS_PER_PARAMETER runs per parameter) and `poor-fit`
    (held-out Spearman below POOR_FIT_SPEARMAN), each {code, step (the swarm size), domains, message}.
    `runs`: the swarm's size (default: config.runs); the law is fit["regressor"] (default: config.regressor)."""
    runs = config.runs if runs is None else runs
    regressor = regmix.resolve_regressor(fit.get("regressor", config.regressor), runs, train_domains)
    found = []
    cv = fit["cross_validation"]
    parameters = regmix.LAWS[regressor]().parameter_count(train_domains) if regressor in regmix.LAWS else 0
    needed = regmix.RUNS_PER_PARAMETER * parameters
    if regressor in regmix.LAWS and runs < needed:
        found.append(
            {
                "code": "small-swarm",
                "step": runs,
                "domains": target_domains,
                "message": (
                    f"{runs} runs for a law with {parameters} parameters per target domain: with fewer than "
                    f"{regmix.RUNS_PER_PARAMETER}x as many runs ({needed}) the fit nearly interpolates the swarm, its "
                    f"{cv['method']} Spearman ({cv['spearman']:.2f}) is optimistic and the chosen mixture can be "
                    "worse than the prior; use more --runs"
                ),
            }
        )
    if not (cv["spearman"] >= POOR_FIT_SPEARMAN):
        found.append(
            {
                "code": "poor-fit",
                "step": runs,
                "domains": target_domains,
                "message": (
                    f"the {regressor} fit ranks held-out swarm runs poorly ({cv['method']} Spearman "
                    f"{cv['spearman']:.2f} < {POOR_FIT_SPEARMAN}): the chosen mixture is a weak guess; usual remedies: "
                    "more --runs, more --steps per run, more eval blocks (train.eval_blocks)"
                ),
            }
        )
    return found


def write_plots(weights: DomainWeights, out: Path) -> None:
    """Beside the artifact: `<stem>_fit.png` (held-out predicted vs observed target loss per swarm run) and
    `<stem>_bars.png` (the chosen mixture beside the prior the swarm was centred on)."""
    from mixweight.domain.plots import plot_regmix_fit, plot_weights_vs_natural

    plot_regmix_fit(weights.method, out.with_name(f"{out.stem}_fit.png"))
    prior = weights.method.get("prior_weights", {})
    label = f"prior ({weights.method.get('prior')})"
    plot_weights_vs_natural(weights, prior, out.with_name(f"{out.stem}_bars.png"), label=label)
