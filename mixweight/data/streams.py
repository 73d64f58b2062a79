"""Per-domain MDS streams of fixed-length token blocks, written with mosaicml-streaming.

Every sample is one block: ``tokens`` (seq_len token ids) and ``domain`` (the domain's
index in the manifest), so any loader over several streams knows where a sample came from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import json

import numpy as np
from streaming import MDSWriter
from streaming.base.format import reader_from_json
from streaming.base.format.index import get_index_basename

from mixweight.errors import MixweightError

# Shards of 32 MiB keep the file count low for big corpora and small for tiny ones.
SHARD_SIZE_LIMIT = 1 << 25


def token_dtype(vocab_size: int) -> np.dtype:
    """The narrowest unsigned dtype holding every token id: halves disk and IO for vocabularies under 65k."""
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.uint32)


def write_stream(out_dir: str | Path, blocks: Iterable[np.ndarray], domain_id: int, seq_len: int, vocab_size: int) -> int:
    """Write blocks (each a 1-D array of seq_len ids) as one MDS stream; returns the number written."""
    dtype = token_dtype(vocab_size)
    columns = {"tokens": f"ndarray:{dtype.name}:{seq_len}", "domain": "int32"}
    count = 0
    with MDSWriter(out=str(out_dir), columns=columns, size_limit=SHARD_SIZE_LIMIT, progress_bar=False) as writer:
        for block in blocks:
            if block.shape != (seq_len,):
                raise ValueError(f"block of shape {block.shape}, expected ({seq_len},)")
            writer.write({"tokens": block.astype(dtype, copy=False), "domain": np.int32(domain_id)})
            count += 1
    return count


def verify_stream(stream_dir: str | Path, where: str) -> int:
    """Check a local stream's shards against its index (present, complete); returns its sample count.

    Size checks are cheap and catch truncated or missing shards before training starts,
    where mosaicml-streaming would fail later inside a background thread.
    """
    stream_dir = Path(stream_dir)
    index_path = stream_dir / get_index_basename()
    try:
        index = json.loads(index_path.read_text())
        shards = index["shards"]
    except (OSError, json.JSONDecodeError, KeyError) as exc:
        raise MixweightError(f"{where}: cannot read the stream index {index_path} ({exc}); re-create the corpus") from exc
    samples = 0
    for shard in shards:
        raw = shard["raw_data"]
        path = stream_dir / raw["basename"]
        if not path.is_file():
            raise MixweightError(f"{where}: shard {path} is missing; re-create the corpus")
        if path.stat().st_size != raw["bytes"]:
            raise MixweightError(
                f"{where}: shard {path} has {path.stat().st_size} bytes, its index says {raw['bytes']}: "
                "the shard is truncated or corrupted; re-create the corpus"
            )
        samples += shard["samples"]
    return samples


def read_stream(stream_dir: str | Path, limit: int | None = None) -> np.ndarray:
    """All blocks of a local stream as an int64 array [n, seq_len], in write order.

    Reads shards directly (no StreamingDataset), so it needs no shared memory: the
    right tool for small splits such as validation sets and for tests.
    """
    stream_dir = Path(stream_dir)
    index = json.loads((stream_dir / get_index_basename()).read_text())
    blocks = []
    for shard_info in index["shards"]:
        shard = reader_from_json(str(stream_dir), None, shard_info)
        for i in range(shard.samples):
            blocks.append(np.asarray(shard[i]["tokens"], dtype=np.int64))
            if limit is not None and len(blocks) >= limit:
                return np.stack(blocks)
    if not blocks:
        return np.zeros((0, 0), dtype=np.int64)
    return np.stack(blocks)
