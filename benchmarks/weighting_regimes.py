"""When does loss-based sample weighting help? LinUpper (with the default curriculum) against uniform sample
weights on the synthetic corpus, as the share of exactly repeated data and the label noise vary.

Two knobs, crossed:

- redundancy: the share p of every batch drawn from `redundant` (8 sequences repeated: learned at once, then
  nothing left to learn); the other six domains share 1 - p equally (a domain_weights file per p);
- label noise: a fraction q of the training tokens of the five learnable domains (unigram, markov1, markov2,
  arithmetic, copy) replaced by uniform random tokens, so their next-token targets are partly unlearnable; the
  validation blocks stay clean (a corpus per q, written beside the base corpus with its own config hash).

In every cell the two arms train with the same seeds (same init, same batches: the weighting is the only
difference) and are paired seed by seed, as `mixweight compare` pairs arms (mixweight/report/paired.py):
Δ = LinUpper - uniform of the final validation loss, mean and 95% t interval over the seeds, on the average of
all domains and on the average of the five learnable ones ("clean"), plus `redundant` itself.

    python benchmarks/weighting_regimes.py --out DIR [--redundancy 0,0.3,0.6] [--noise 0,0.25] [--seeds 0,1,2]
                                           [--steps 150] [--model gpt2-tiny]

Runs are cached in DIR (a finished run is reused), so an interrupted benchmark continues where it stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shutil
import time
from pathlib import Path

import numpy as np

from mixweight.core.artifact import DomainWeights
from mixweight.data.manifest import DomainSplitStats, load_manifest
from mixweight.data.streams import read_stream, write_stream
from mixweight.data.synthetic import write_synthetic_corpus
from mixweight.report.paired import paired_comparison, t_interval, verdict
from mixweight.report.runs import Arm, load_run
from mixweight.train.config import TrainConfig
from mixweight.train.loop import train

LEARNABLE = ("unigram", "markov1", "markov2", "arithmetic", "copy")
ARMS = {"uniform": "none", "linupper": "linupper"}


def noisy_corpus(base: Path, out: Path, rate: float, seed: int = 1234) -> Path:
    """`base` with a fraction `rate` of the learnable domains' training tokens replaced by uniform random ids."""
    if (out / "manifest.json").is_file():
        return out
    manifest = load_manifest(base)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(base / "val", staging / "val")
    splits = {"train": {}, "val": manifest.splits["val"]}
    for index, domain in enumerate(manifest.domains):
        stats = manifest.splits["train"][domain]
        blocks = read_stream(manifest.stream_dir(base, "train", domain), seq_len=manifest.seq_len)
        if domain in LEARNABLE and rate > 0:
            rng = np.random.default_rng([seed, index])
            hit = rng.random(blocks.shape) < rate
            blocks = np.where(hit, rng.integers(0, manifest.vocab_size, size=blocks.shape), blocks)
        write_stream(staging / stats.path, iter(blocks), index, manifest.seq_len, manifest.vocab_size)
        splits["train"][domain] = DomainSplitStats(**dataclasses.asdict(stats))
    digest = hashlib.sha256(f"{manifest.config_hash}:label-noise:{rate}:{seed}".encode()).hexdigest()[:16]
    noisy = dataclasses.replace(
        manifest,
        splits=splits,
        config_hash=digest,
        source={**manifest.source, "label_noise": {"rate": rate, "domains": list(LEARNABLE), "seed": seed}},
    )
    noisy.write(staging)
    staging.rename(out)
    return out


def mixture_file(directory: Path, domains: list[str], share: float) -> Path:
    path = directory / f"redundant-{share:g}.json"
    rest = (1.0 - share) / (len(domains) - 1)
    weights = [share if d == "redundant" else rest for d in domains]
    DomainWeights(domains=list(domains), weights=weights, method={"name": f"redundant {share:g}"}).write(path)
    return path


def run(corpus: Path, weights: Path, out: Path, weighting: str, seed: int, args) -> Path:
    if (out / "eval.json").is_file():
        return out
    config = TrainConfig(
        data=str(corpus),
        out=str(out),
        model=args.model,
        steps=args.steps,
        batch_size=16,
        lr=2e-3,
        final_lr=2e-4,
        warmup_steps=max(1, args.steps // 10),
        eval_every=0,
        checkpoint_every=args.steps,
        keep_checkpoints=1,
        seed=seed,
        domain_weights=str(weights),
        sample_weighting=weighting,
        progress=False,
        resume=(out / "checkpoints").is_dir(),
    )
    config.validate()
    started = time.perf_counter()
    train(config)
    print(f"  {out.name}: {time.perf_counter() - started:.0f} s", flush=True)
    return out


def cell_summary(runs: dict[str, list[Path]], domains: list[str]) -> dict:
    arms = {name: Arm(name, [load_run(p) for p in paths]) for name, paths in runs.items()}
    entry = paired_comparison(arms["linupper"], arms["uniform"], domains)
    per_seed = zip(*(entry["domains"][d]["per_seed"] for d in LEARNABLE))
    clean = [float(np.mean(values)) for values in per_seed]
    mean, low, high = t_interval(clean)
    entry["clean"] = {"mean": mean, "low": low, "high": high, "per_seed": clean, "verdict": verdict(low, high)}
    return entry


def fmt(entry: dict) -> str:
    interval = "" if entry["low"] is None else f" [{entry['low']:+.3f}, {entry['high']:+.3f}]"
    return f"{entry['mean']:+.3f}{interval} {entry['verdict'] or ''}".strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--redundancy", default="0,0.3,0.6")
    parser.add_argument("--noise", default="0,0.25")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--model", default="gpt2-tiny")
    args = parser.parse_args()
    out = Path(args.out)
    base = out / "corpus-clean"
    manifest = write_synthetic_corpus(base, seed=0, tokens_per_domain=65536, seq_len=128)
    domains = list(manifest.domains)
    shares = [float(v) for v in args.redundancy.split(",")]
    rates = [float(v) for v in args.noise.split(",")]
    seeds = [int(v) for v in args.seeds.split(",")]
    mixtures = {p: mixture_file(out, domains, p) for p in shares}
    results = []
    for rate in rates:
        corpus = base if rate == 0 else noisy_corpus(base, out / f"corpus-noise-{rate:g}", rate)
        for share in shares:
            cell = out / f"noise-{rate:g}-redundant-{share:g}"
            runs = {name: [] for name in ARMS}
            print(f"cell: label noise {rate:g}, redundant share {share:g}", flush=True)
            for seed in seeds:
                for name, weighting in ARMS.items():  # the arms alternate, seed by seed
                    runs[name].append(run(corpus, mixtures[share], cell / f"{name}-seed{seed}", weighting, seed, args))
            entry = cell_summary(runs, domains)
            results.append({"noise": rate, "redundant_share": share, **entry})
            print(
                f"  Δ average {fmt(entry['average'])}; Δ clean {fmt(entry['clean'])}; "
                f"Δ redundant {fmt(entry['domains']['redundant'])}",
                flush=True,
            )
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    columns = ["label noise", "redundant share", "Δ average [95% CI]", "Δ learnable [95% CI]", "Δ redundant [95% CI]"]
    print("\n| " + " | ".join(columns) + " |")
    print("|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['noise']:g} | {r['redundant_share']:g} | {fmt(r['average'])} | {fmt(r['clean'])} | "
            f"{fmt(r['domains']['redundant'])} |"
        )


if __name__ == "__main__":
    main()
