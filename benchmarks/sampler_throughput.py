"""Samples/s of mixweight's domain mixture vs a plain StreamingDataset vs a naive Python sampler.

    .venv/bin/python benchmarks/sampler_throughput.py --batch-size 64 --batches 300 --repeats 5

Three sides draw micro-batches ``{"input_ids": [B, L], "domain": [B]}`` from the same synthetic
corpus (7 domains, MDS streams) with the same domain weights, one process, no workers:
- mixweight: `DomainMixture.next_batch(step)` (schedule lookup, `MixtureLoader`, per-domain counts);
- streaming: a plain `StreamingDataset` over the same streams with the same proportions, epoch
  size, shuffle seed and canonical nodes, iterated by a torch `DataLoader` with the same collate:
  the floor mixweight's wrapper is measured against (goal: mixweight >= 0.95x);
- naive: a Python weighted sampler over in-memory numpy arrays (per sample: draw a domain by
  weight, then a block uniformly; `np.stack` into the batch): what a hand-rolled loader costs.
Sides alternate (mixweight, streaming, naive, mixweight, ...) `--repeats` times; each side is built
fresh per repeat, one warm-up batch is drawn, then `--batches` batches are timed.

Also the phase change: a schedule whose phase changes every `--phase-every` steps, timing the
`next_batch` call that enters a new phase (close the old dataset, build the new one, first batch)
against an ordinary `next_batch` call.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from streaming import LocalDataset, Stream, StreamingDataset
from torch.utils.data import DataLoader

from mixweight.core.distributed import World
from mixweight.data.manifest import load_manifest
from mixweight.data.synthetic import write_synthetic_corpus
from mixweight.sampling.loader import _collate
from mixweight.sampling.mixture import DomainMixture
from mixweight.sampling.schedule import Phase, resolve_schedule

WEIGHTS = [0.4, 0.2, 0.15, 0.1, 0.07, 0.05, 0.03]


def time_mixweight(corpus, manifest, weights_file, epoch, batch, n, seed) -> float:
    mixture = DomainMixture(corpus, manifest, resolve_schedule(manifest, weights_file), epoch, batch, seed, World())
    try:
        mixture.next_batch(0)
        started = time.perf_counter()
        for step in range(1, n + 1):
            mixture.next_batch(step)
        return n * batch / (time.perf_counter() - started)
    finally:
        mixture.close()


def time_streaming(corpus, manifest, proportions, epoch, batch, n, seed) -> float:
    streams = [
        Stream(local=str(manifest.stream_dir(corpus, "train", d)), proportion=proportions[d]) for d in manifest.domains
    ]
    dataset = StreamingDataset(
        streams=streams,
        epoch_size=epoch,
        shuffle=True,
        shuffle_seed=seed,
        batch_size=batch,
        num_canonical_nodes=1,
        replication=None,
    )
    try:

        def batches():
            while True:
                yield from DataLoader(dataset, batch_size=batch, num_workers=0, collate_fn=_collate)

        it = batches()
        next(it)
        started = time.perf_counter()
        for _ in range(n):
            next(it)
        return n * batch / (time.perf_counter() - started)
    finally:
        from mixweight.sampling.loader import _shared_memory_of
        from mixweight.sampling.shm import remove_filelocks

        if getattr(dataset, "_iterator", None) is not None:
            dataset._iterator.exit()
        for segment in _shared_memory_of(dataset):
            segment.cleanup()
        remove_filelocks(dataset._shm_prefix_int)


def load_arrays(corpus, manifest) -> list[np.ndarray]:
    arrays = []
    for d in manifest.domains:
        ds = LocalDataset(str(manifest.stream_dir(corpus, "train", d)))
        arrays.append(np.stack([np.asarray(ds[i]["tokens"]) for i in range(len(ds))]))
    return arrays


def time_naive(arrays, weights, batch, n, seed) -> float:
    rng = np.random.default_rng(seed)
    cumulative = np.cumsum(weights)

    def draw():
        tokens, domains = [], []
        for _ in range(batch):
            d = min(int(np.searchsorted(cumulative, rng.random(), side="right")), len(arrays) - 1)
            tokens.append(arrays[d][rng.integers(len(arrays[d]))])
            domains.append(d)
        return {
            "input_ids": torch.from_numpy(np.stack(tokens).astype(np.int64)),
            "domain": torch.tensor(domains, dtype=torch.int64),
        }

    draw()
    started = time.perf_counter()
    for _ in range(n):
        draw()
    return n * batch / (time.perf_counter() - started)


def time_phase_change(corpus, manifest, epoch, batch, phases_n, every, seed) -> tuple[float, float]:
    """Median seconds of a `next_batch` that enters a new phase, and of an ordinary one."""
    rng = np.random.default_rng(seed)
    phases = [
        Phase(i * every, dict(zip(manifest.domains, (w / w.sum()).tolist())))
        for i, w in enumerate(rng.dirichlet(np.ones(len(manifest.domains)), phases_n))
    ]
    mixture = DomainMixture(corpus, manifest, phases, epoch, batch, seed, World())
    change, ordinary = [], []
    try:
        for step in range(phases_n * every):
            started = time.perf_counter()
            mixture.next_batch(step)
            (change if step % every == 0 and step > 0 else ordinary).append(time.perf_counter() - started)
    finally:
        mixture.close()
    return statistics.median(change), statistics.median(ordinary[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens-per-domain", type=int, default=262_144)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--epoch-size", type=int, default=20_480)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--phases", type=int, default=8)
    parser.add_argument("--phase-every", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        write_synthetic_corpus(corpus, seed=0, tokens_per_domain=args.tokens_per_domain, seq_len=args.seq_len)
        manifest = load_manifest(corpus)
        proportions = dict(zip(manifest.domains, WEIGHTS))
        weights_file = Path(tmp) / "weights.json"
        weights_file.write_text(json.dumps({"weights": proportions}))
        arrays = load_arrays(corpus, manifest)
        blocks = sum(len(a) for a in arrays)
        print(
            f"corpus: {len(manifest.domains)} domains, {blocks} train blocks of {args.seq_len} tokens; "
            f"weights {WEIGHTS}; epoch {args.epoch_size}; batch {args.batch_size}; {args.batches} timed batches"
        )

        rows = []
        for r in range(args.repeats):
            seed = args.seed + r
            mw = time_mixweight(
                corpus, manifest, str(weights_file), args.epoch_size, args.batch_size, args.batches, seed
            )
            sd = time_streaming(corpus, manifest, proportions, args.epoch_size, args.batch_size, args.batches, seed)
            nv = time_naive(arrays, WEIGHTS, args.batch_size, args.batches, seed)
            rows.append((mw, sd, nv))
            print(
                f"repeat {r}: mixweight {mw:,.0f}  streaming {sd:,.0f}  naive {nv:,.0f} samples/s  "
                f"(mixweight/streaming {mw / sd:.2f}x, mixweight/naive {mw / nv:.2f}x)",
                flush=True,
            )
        mw, sd, nv = (statistics.median(c) for c in zip(*rows))
        ratios = [row[0] / row[1] for row in rows]
        print("\n| side | samples/s (median) | ratio mixweight / side |\n|---|---|---|")
        print(f"| mixweight DomainMixture | {mw:,.0f} | |")
        print(
            f"| plain StreamingDataset | {sd:,.0f} | **{mw / sd:.2f}x** "
            f"(per-repeat {min(ratios):.2f}-{max(ratios):.2f}x) |"
        )
        print(f"| naive Python weighted sampler | {nv:,.0f} | {mw / nv:.2f}x |")

        change, ordinary = time_phase_change(
            corpus, manifest, args.epoch_size, args.batch_size, args.phases, args.phase_every, args.seed
        )
        print(
            f"\nphase change: next_batch entering a new phase {change * 1e3:.1f} ms (median of {args.phases - 1}) vs "
            f"{ordinary * 1e3:.2f} ms ordinary; rebuild cost ~{(change - ordinary) * 1e3:.1f} ms"
        )


if __name__ == "__main__":
    main()
