"""What checking shard hashes costs at a run's start: `check_hashes` against the checks every start already makes.

A run opens its corpus (`load_manifest`: the manifest, every stream index, every shard's size), then hashes
the shards of a corpus of up to CHEAP_HASH_BYTES (`check_hashes`: read every byte, xxh3_64) and pins every
shard's size and modification time (`shards_stamp`: stat only). This writes a synthetic corpus and times the
three arms side by side, alternating them, and prints the median of each and the hash throughput.

    python benchmarks/shard_hashes.py --tokens-per-domain 2000000 --repeats 7
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens-per-domain", type=int, default=2_000_000)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    from mixweight.data.manifest import check_hashes, load_manifest, shards_stamp
    from mixweight.data.synthetic import write_synthetic_corpus

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        write_synthetic_corpus(corpus, seed=0, tokens_per_domain=args.tokens_per_domain, seq_len=args.seq_len)
        shard_bytes = sum(p.stat().st_size for p in corpus.rglob("*.mds"))
        manifest = load_manifest(corpus)
        arms = {
            "load_manifest": lambda: load_manifest(corpus),
            "check_hashes": lambda: check_hashes(corpus, manifest),
            "shards_stamp": lambda: shards_stamp(corpus, manifest),
        }
        times: dict[str, list[float]] = {name: [] for name in arms}
        for _ in range(args.repeats):
            for name, arm in arms.items():  # alternating: the same load for every arm
                started = time.perf_counter()
                arm()
                times[name].append(time.perf_counter() - started)
    print(f"corpus: 7 domains x {args.tokens_per_domain:,} tokens, {shard_bytes / 2**20:.1f} MiB of shards")
    base = statistics.median(times["load_manifest"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:14s} median {median * 1000:8.1f} ms  ({median / base:5.2f}x load_manifest)")
    rate = shard_bytes / statistics.median(times["check_hashes"]) / 2**30
    print(f"hash throughput {rate:.2f} GiB/s: a 1 GiB corpus (the limit) adds about {1 / rate:.2f} s per start")


if __name__ == "__main__":
    main()
