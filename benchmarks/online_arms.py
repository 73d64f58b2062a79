"""Do the online arms (ODM, online DoReMi) beat uniform on the synthetic corpus? Paired over seeds, with compute.

    nice -n 10 .venv/bin/python benchmarks/online_arms.py --seeds 0,1,2 --steps 200 --out /tmp/online-arms

Runs already finished in --out (an eval.json) are reused, so the seeds and arms can be run in parts
(`--arms uniform,odm,online-doremi`, then all of them) and the table is printed over what is asked.

One process, the CPU, fp32, gpt2-tiny on the quickstart's synthetic corpus (7 domains, 65,536 tokens each,
seq 128). One reference run (uniform mixture, `--reference-steps`) serves every online DoReMi arm. For each
seed, the arms run one after the other (same seed: same init and the same first phase), in the order given:

- uniform: static uniform weights;
- odm: `online:odm` with this version's defaults (the official smoothed-mean updater, alpha 0.9);
- odm-exp3: `online:odm --mixing.odm.reward exp3` (cumulative importance-weighted losses);
- online-doremi: `online:doremi`, eta 0.02, smoothing 0.1 (the quickstart's), exploration 0.1 (default);
- online-doremi-eta1: `online:doremi` with the defaults (eta 1.0, smoothing 1e-3, exploration 0.1), which
  collapsed onto one domain per phase before the exploration floor;
- online-doremi-eta1-g0: the same with exploration 0 (alpha sampled itself, the earlier form).

Every online arm re-chooses its mixture every `--mixing-every` steps (the arms' `mixing.every`) from a uniform
prior. The result of a run is its final average validation loss (eval.json: the mean over domains of the
per-domain loss on `--eval-blocks` blocks each). Printed: per arm, each seed's loss, the paired difference to
uniform per seed, its mean and 95% t interval (n - 1 degrees of freedom), the last phase's mixture, and the
compute: training tokens (steps x batch x seq_len), plus for online DoReMi one no-grad reference forward per
training token (about a third of a training step's FLOPs) and the reference run's own training tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

import torch
from scipy import stats

from mixweight.core.config import merge_values
from mixweight.data.synthetic import write_synthetic_corpus
from mixweight.train.config import TrainConfig
from mixweight.train.loop import train

ARMS = {
    "uniform": {"domain_weights": "uniform"},
    "odm": {"domain_weights": "online:odm"},
    "odm-exp3": {"domain_weights": "online:odm", "mixing": {"odm": {"reward": "exp3"}}},
    "online-doremi": {"domain_weights": "online:doremi", "mixing": {"doremi": {"eta": 0.02, "smoothing": 0.1}}},
    "online-doremi-eta1": {"domain_weights": "online:doremi"},  # the offline defaults: eta 1.0, smoothing 1e-3
    "online-doremi-eta1-g0": {"domain_weights": "online:doremi", "mixing": {"doremi": {"exploration": 0.0}}},
}


def _config(args, corpus: str, out: Path, seed: int, steps: int, **extra) -> TrainConfig:
    config = TrainConfig(
        data=corpus,
        out=str(out),
        model=args.model,
        steps=steps,
        batch_size=args.batch_size,
        lr=2e-3,
        final_lr=2e-4,
        warmup_steps=args.warmup_steps,
        seed=seed,
        eval_every=0,
        eval_blocks=args.eval_blocks,
        checkpoint_every=10**9,
        log_every=20,
        progress=False,
        **extra,
    )
    config.validate()
    return config


def _train_once(config: TrainConfig) -> None:
    """Train unless the run finished before (an --out used again reuses its finished runs: a long benchmark on a
    shared machine is run in parts); an unfinished one starts afresh (resume finds no checkpoint)."""
    if (Path(config.out) / "eval.json").is_file():
        return
    config.resume = Path(config.out).is_dir()
    train(config)


def _final_loss(run: Path) -> float:
    return json.loads((run / "eval.json").read_text())["average_loss"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="a new directory for the corpus and the runs")
    parser.add_argument("--model", default="gpt2-tiny")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--reference-steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--warmup-steps", type=int, default=20)
    parser.add_argument("--mixing-every", type=int, default=20)
    parser.add_argument("--eval-blocks", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    corpus = str(out / "corpus")
    if not (out / "corpus" / "manifest.json").is_file():
        write_synthetic_corpus(corpus, seed=0, tokens_per_domain=65536, seq_len=128)
    seq_len = json.loads((out / "corpus" / "manifest.json").read_text())["seq_len"]
    seeds = [int(s) for s in args.seeds.split(",")]
    arms = args.arms.split(",")
    load = os.getloadavg()
    reference = out / "reference"
    if any(ARMS[a]["domain_weights"] == "online:doremi" for a in arms):
        _train_once(_config(args, corpus, reference, 0, args.reference_steps, domain_weights="uniform"))
    losses: dict[str, dict[int, float]] = {a: {} for a in arms}
    last: dict[str, list] = {}
    for seed in seeds:
        for arm in arms:
            extra = dict(ARMS[arm])
            if extra["domain_weights"].startswith("online:"):
                extra = merge_values(extra, {"mixing": {"every": args.mixing_every}}, TrainConfig)
            if extra["domain_weights"] == "online:doremi":
                extra = merge_values(extra, {"mixing": {"doremi": {"reference": str(reference)}}}, TrainConfig)
            run = out / f"{arm}-seed{seed}"
            _train_once(_config(args, corpus, run, seed, args.steps, **extra))
            losses[arm][seed] = _final_loss(run)
            if (run / "domain_weights.json").is_file():
                last.setdefault(arm, []).append(json.loads((run / "domain_weights.json").read_text()))
            print(f"{arm} seed {seed}: final average validation loss {losses[arm][seed]:.4f}", flush=True)
    load_end = os.getloadavg()
    print(f"\nload average (1, 5, 15 min) at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; at the end: "
          f"{load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f}; cpu count {os.cpu_count()}")  # fmt: skip
    tokens = args.steps * args.batch_size * seq_len
    print(f"\nfinal average validation loss, {len(seeds)} seeds; difference = arm - uniform, paired by seed\n")
    print("| arm | loss per seed | mean | paired difference to uniform per seed | mean difference [95% t interval] |")
    print("|---|---|---|---|---|")
    for arm in arms:
        values = [losses[arm][s] for s in seeds]
        row = f"| {arm} | {', '.join(f'{v:.3f}' for v in values)} | {statistics.mean(values):.3f} |"
        if arm == "uniform" or "uniform" not in losses:
            print(row + " - | - |")
            continue
        diffs = [losses[arm][s] - losses["uniform"][s] for s in seeds]
        mean = statistics.mean(diffs)
        half = stats.t.ppf(0.975, len(diffs) - 1) * statistics.stdev(diffs) / len(diffs) ** 0.5
        per_seed = ", ".join(f"{d:+.3f}" for d in diffs)
        print(row + f" {per_seed} | {mean:+.3f} [{mean - half:+.3f}, {mean + half:+.3f}] |")
    print(f"\ncompute per run: {args.steps} steps x {args.batch_size * seq_len} tokens = {tokens:,} training tokens")
    print(
        f"online DoReMi adds a no-grad reference forward over the same {tokens:,} tokens (~1/3 of their training "
        f"FLOPs) and its reference run: {args.reference_steps} x {args.batch_size * seq_len} = "
        f"{args.reference_steps * args.batch_size * seq_len:,} training tokens, shared by its seeds"
    )
    for arm, artifacts in last.items():
        domains = artifacts[0]["domains"]
        print(f"\n{arm}: last phase's mixture per seed ({', '.join(domains)})")
        for artifact in artifacts:
            print("  " + ", ".join(f"{w:.3f}" for w in artifact["last_weights"]))


if __name__ == "__main__":
    main()
