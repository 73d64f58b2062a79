"""A corpus whose training streams hold a fixed, seeded fraction of every domain's blocks.

A run of t tokens on it repeats domain d as often as a run of t / fraction tokens on the whole corpus with the
same mixture: w_d t / (fraction tokens_d) = w_d T / tokens_d for T = t / fraction. `weights regmix` trains its
swarm on one (fraction = a swarm run's tokens / the main run's token budget), so every proxy sees each domain
repeated as the main run would (docs/algorithms.md, "Proxies at the target's repetition").

    subsample_corpus(source_dir, manifest, out_dir, fraction, seed) -> Manifest

Domain d keeps n_d = max(1, round(fraction * blocks_d)) of its training blocks, chosen uniformly without
replacement by numpy's generator seeded with (seed, d's index), in their stream order; the validation streams
(and a trained tokenizer) are copied as they are, so validation losses are those of the whole corpus. The
manifest records the source corpus's config hash, the fraction, the seed and n_d of blocks_d per domain; its
config hash is a hash of those. The directory is written to a staging directory and swapped in
(data/output.py); one that already holds this subsample is reused, one holding anything else is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path
from typing import Iterator

import numpy as np
from streaming.base.format import reader_from_json
from streaming.base.format.index import get_index_basename

from mixweight.data.manifest import DomainSplitStats, Manifest, load_manifest
from mixweight.data.output import existing_corpus_hash, holds_corpus, staged_directory
from mixweight.data.streams import check_encodings, read_index, write_stream
from mixweight.errors import MixweightError


def kept_blocks(blocks: int, fraction: float) -> int:
    return min(blocks, max(1, round(fraction * blocks)))


def subsample_hash(manifest: Manifest, fraction: float, seed: int) -> str:
    key = {"source": manifest.config_hash, "fraction": float(fraction), "seed": int(seed), "version": 1}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _selected_blocks(stream_dir: Path, chosen: np.ndarray, seq_len: int) -> Iterator[np.ndarray]:
    """The blocks at the sorted indices `chosen`, read shard by shard (only they are held in memory)."""
    index_path = stream_dir / get_index_basename()
    shards = read_index(index_path, str(stream_dir))
    check_encodings(shards, index_path, str(stream_dir), seq_len)
    start, at = 0, 0
    for shard_info in shards:
        shard = reader_from_json(str(stream_dir), None, shard_info)
        end = start + shard.samples
        while at < len(chosen) and chosen[at] < end:
            yield np.asarray(shard[int(chosen[at]) - start]["tokens"])
            at += 1
        start = end


def subsample_corpus(
    source_dir: str | Path, manifest: Manifest, out_dir: str | Path, fraction: float, seed: int
) -> Manifest:
    """Write (or reuse) the subsample of `source_dir` at `out_dir` (module docstring); returns its manifest."""
    if not 0 < fraction <= 1:
        raise MixweightError(f"subsample: the fraction must be in (0, 1], got {fraction}")
    source_dir, out_dir = Path(source_dir), Path(out_dir)
    wanted = subsample_hash(manifest, fraction, seed)
    if holds_corpus(out_dir):
        if existing_corpus_hash(out_dir) == wanted:
            return load_manifest(out_dir)
        raise MixweightError(
            f"{out_dir}: holds another corpus than the subsample of {source_dir} at {fraction:.6g} (seed {seed}); "
            "it is left as it is: move it aside or choose another work directory"
        )
    if out_dir.exists() and any(out_dir.iterdir()):
        raise MixweightError(f"{out_dir}: exists and is not a mixweight corpus; it is left as it is")
    train = {}
    kept = {}
    with staged_directory(out_dir) as staging:
        for index, domain in enumerate(manifest.domains):
            stats = manifest.splits["train"][domain]
            n = kept_blocks(stats.blocks, fraction)
            chosen = np.sort(np.random.default_rng([seed, index]).choice(stats.blocks, size=n, replace=False))
            source = manifest.stream_dir(source_dir, "train", domain)
            written = write_stream(
                staging / stats.path, _selected_blocks(source, chosen, manifest.seq_len), index, manifest.seq_len,
                manifest.vocab_size,
            )  # fmt: skip
            train[domain] = DomainSplitStats(
                documents=written, tokens=written * manifest.seq_len, blocks=written, path=stats.path
            )
            kept[domain] = [written, stats.blocks]
        for domain in manifest.domains:
            path = manifest.splits["val"][domain].path
            shutil.copytree(manifest.stream_dir(source_dir, "val", domain), staging / path)
        tokenizer = manifest.tokenizer.get("path")
        if tokenizer and (source_dir / tokenizer).exists():
            copy = shutil.copytree if (source_dir / tokenizer).is_dir() else shutil.copy2
            (staging / tokenizer).parent.mkdir(parents=True, exist_ok=True)
            copy(source_dir / tokenizer, staging / tokenizer)
        sub = dataclasses.replace(
            manifest,
            splits={**manifest.splits, "train": train},
            source={
                "kind": "subsample",
                "source_config_hash": manifest.config_hash,
                "fraction": float(fraction),
                "seed": int(seed),
                "blocks_kept": kept,
            },
            config_hash=wanted,
        )
        sub.write(staging)
    return load_manifest(out_dir)
