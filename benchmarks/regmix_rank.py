"""How well does a RegMix swarm's regression rank mixtures it has not seen, as the swarm grows?

On the synthetic corpus, one swarm of max(K) proxy runs (`weights regmix`'s own mixtures: the prior,
uniform, Dirichlet draws around the prior) and a held-out set of H further mixtures from the same
sampler with another seed, every run trained exactly as `weights regmix` trains its swarm (same
TrainConfig, same init seed: the mixture is the only difference). For each K in --sizes the
regression is fitted on the swarm's first K runs (what `--runs K` would have trained) and scored on
the held-out runs: Spearman rank correlation and mean absolute error of predicted vs observed target
loss (the mean validation loss over every domain), beside the fit's own leave-one-out Spearman. The
mixture each fit picks is then trained like a swarm run, and its observed target loss is printed
beside the prediction and the best held-out and swarm runs.

    python benchmarks/regmix_rank.py [--sizes 8,16,32] [--held-out 12] [--proxy gpt2-micro] [--steps 40]
                                     [--batch-size 16] [--tokens-per-domain 16384] [--regressors loglinear]
                                     [--fit-losses huber] [--floors free] [--kl-regs 0.05] [--work DIR]

Every combination of the fit's loss (least_squares, huber), its floor (free, or min: c <= min(y), the fit
before) and the pick's KL pull is scored, and its pick trained.

The runs are cached in --work (default: a temporary directory), so a rerun with more sizes trains
only the new runs.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from mixweight.core.artifact import DomainWeights
from mixweight.data.manifest import load_manifest
from mixweight.data.synthetic import write_synthetic_corpus
from mixweight.domain import regmix
from mixweight.domain.regmix_config import RegMixConfig, prior_weights
from mixweight.domain.regmix_run import member_config
from mixweight.domain.swarm import train_share


def _members(config: RegMixConfig, corpus: str, work: Path, mixtures: np.ndarray, domains: list[str], first: int):
    members = []
    for offset, row in enumerate(mixtures):
        index = first + offset
        train_config = member_config(config, corpus, work, index)
        path = Path(train_config.domain_weights)
        if not path.is_file():
            DomainWeights(domains=domains, weights=row.tolist()).write(path)
        members.append(
            {
                "config": __import__("dataclasses").asdict(train_config),
                "mixture": dict(zip(domains, row.tolist())),
                "targets": domains,
                "log": str(work / "logs" / f"run-{index:03d}.log"),
            }
        )
    return members


def _losses(members: list[dict], domains: list[str]) -> np.ndarray:
    import json

    rows = []
    for member in members:
        final = json.loads((Path(member["config"]["out"]) / "eval.json").read_text())["domains"]
        rows.append([final[d]["loss"] for d in domains])
    return np.array(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="8,16,32")
    parser.add_argument("--held-out", type=int, default=12)
    parser.add_argument("--proxy", default="gpt2-micro")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--tokens-per-domain", type=int, default=16384)
    parser.add_argument("--regressors", default="loglinear")
    parser.add_argument("--fit-losses", default="huber", help="comma-separated: least_squares, huber")
    parser.add_argument("--floors", default="free", help="comma-separated: free, min (the fit's c <= min(y))")
    parser.add_argument("--kl-regs", default="0.05", help="comma-separated KL pulls of the pick")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default=None)
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    regressors = args.regressors.split(",")

    work = Path(args.work or tempfile.mkdtemp(prefix="regmix-rank-"))
    corpus = work / "corpus"
    if not (corpus / "manifest.json").is_file():
        write_synthetic_corpus(corpus, seed=0, tokens_per_domain=args.tokens_per_domain, seq_len=64)
    manifest = load_manifest(corpus)
    domains = list(manifest.domains)
    config = RegMixConfig(
        data=str(corpus),
        out=str(work / "unused.json"),
        proxy=args.proxy,
        steps=args.steps,
        seed=args.seed,
        train={"batch_size": args.batch_size},
    )
    config.validate()
    prior = prior_weights(manifest, domains, "natural")
    swarm_x = regmix.sample_mixtures(prior, max(sizes), config.concentration, args.seed)
    held_x = regmix.sample_mixtures(prior, args.held_out + 2, config.concentration, args.seed + 1000)[2:]
    (work / "mixtures").mkdir(parents=True, exist_ok=True)
    swarm = _members(config, str(corpus), work, swarm_x, domains, 0)
    held = _members(config, str(corpus), work, held_x, domains, 1000)

    print(
        f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start; "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}",
        flush=True,
    )
    started = time.perf_counter()
    todo = [m for m in swarm + held if not (Path(m["config"]["out"]) / "eval.json").is_file()]
    train_share(swarm + held, list(range(len(swarm) + len(held))), len(swarm) + len(held), progress=False)
    trained = time.perf_counter() - started
    print(
        f"trained {len(todo)} runs ({args.proxy} x {args.steps} steps, batch {args.batch_size}) in {trained:.0f}s "
        f"({trained / max(len(todo), 1):.1f}s a run); load average {os.getloadavg()[0]:.2f} at the end",
        flush=True,
    )

    swarm_y, held_y = _losses(swarm, domains), _losses(held, domains)
    held_target = held_y.mean(axis=1)
    print(
        f"held-out target loss: {held_target.min():.4f} .. {held_target.max():.4f} (spread {np.ptp(held_target):.4f})"
    )
    rows, picks = [], []
    variants = [
        (loss, floor, float(kl))
        for loss in args.fit_losses.split(",")
        for floor in args.floors.split(",")
        for kl in args.kl_regs.split(",")
    ]
    for name in regressors:
        for k in sizes:
            for loss, floor, kl in variants if name in regmix.LAWS else [("-", "-", float(args.kl_regs.split(",")[0]))]:
                x, y = swarm_x[:k], swarm_y[:k]
                fit = {"loss": loss, "floor_at_min": floor == "min"} if name in regmix.LAWS else {}
                model = regmix.make_regressor(name, args.seed, **fit).fit(x, y)
                scored = regmix.fit_statistics(model.predict(held_x), held_target)
                loo = regmix.cross_validate(name, x, y, args.seed, **fit)
                best = x[int(np.argmin(y.mean(axis=1)))]
                pick = regmix.optimise(model, prior, kl_reg=kl, seed=args.seed, starts=best)
                rows.append((f"{name} | {loss} | {floor} | {kl:g}", k, scored, loo, float(model.predict(pick)[0])))
                picks.append(pick)
    # each pick trained like a swarm run: what the chosen mixture actually reaches at the proxy's scale
    picked = _members(config, str(corpus), work, np.array(picks), domains, 2000 + 100 * args.seed)
    train_share(picked, list(range(len(picked))), len(picked), progress=False)
    observed = _losses(picked, domains).mean(axis=1)
    header = "| regressor | fit loss | floor | kl_reg | K | held-out Spearman | held-out MAE | LOO Spearman "
    header += "| pick: predicted | observed |"
    print(header)
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (name, k, scored, loo, predicted), actual in zip(rows, observed):
        print(
            f"| {name} | {k} | {scored['spearman']:.3f} | {scored['mae']:.4f} | {loo['spearman']:.3f} "
            f"| {predicted:.4f} | {actual:.4f} |",
            flush=True,
        )
    print(
        f"observed: best held-out run {held_target.min():.4f}, best swarm run {swarm_y.mean(axis=1).min():.4f}, "
        f"the prior (run 0) {swarm_y[0].mean():.4f}"
    )
    print(f"total {time.perf_counter() - started:.0f}s; work directory {work}")


if __name__ == "__main__":
    main()
