"""Token ids on their way from the tokenizing pass to blocks (`data prepare`).

`SpillFiles`: one flat token file per (split, domain), appended to document by document, later cut into
seq_len blocks. Every domain is guaranteed one validation block: `ValCandidates` keeps, per domain, the
training documents with the lowest hash scores (one block's worth), and `guarantee_val_block` moves them to
validation when the hash put too few there. `check_sizes` refuses a domain too small for a training and a
validation block.
"""

from __future__ import annotations

import heapq
import os
from collections import Counter
from pathlib import Path
from typing import Iterator

import numpy as np

from mixweight.errors import MixweightError


class SpillFiles:
    """One flat token file per (split, domain), appended to as documents arrive."""

    def __init__(self, root: Path, dtype: np.dtype, eos_id: int):
        self.root, self.dtype = root, dtype
        self.eos = np.asarray([eos_id], dtype=dtype).tobytes()
        self.files: dict[tuple[str, str], object] = {}
        self.paths: dict[tuple[str, str], Path] = {}
        self.documents: Counter = Counter()
        self.tokens: Counter = Counter()
        root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: tuple[str, str]) -> Path:
        if key not in self.paths:
            self.paths[key] = self.root / f"{len(self.paths)}.bin"  # numbered: domain names stay out of file names
        return self.paths[key]

    def append(self, key: tuple[str, str], ids: np.ndarray) -> int:
        """Append one document and its EOS; returns its offset (in tokens) in the spill file."""
        if key not in self.files:
            self.files[key] = open(self._path(key), "wb")
        f = self.files[key]
        f.write(ids.astype(self.dtype, copy=False).tobytes())
        f.write(self.eos)
        offset = self.tokens[key]
        self.documents[key] += 1
        self.tokens[key] += len(ids) + 1
        return offset

    def close(self) -> None:
        for f in self.files.values():
            f.close()

    def move_to_val(self, domain: str, spans: list[tuple[int, int]], chunk: int = 1 << 24) -> None:
        """Move whole documents ((offset, length) in the train file, sorted) to the end of the val file."""
        train, val = ("train", domain), ("val", domain)
        data = np.memmap(self.paths[train], dtype=self.dtype, mode="r")
        with open(self._path(val), "ab") as f:
            for offset, length in spans:
                f.write(data[offset : offset + length].tobytes())
        kept = self.paths[train].with_suffix(".kept")
        with open(kept, "wb") as f:  # the train file without the moved spans, copied in bounded chunks
            start = 0
            for end, next_start in [(o, o + n) for o, n in spans] + [(len(data), len(data))]:
                for i in range(start, end, chunk):
                    f.write(data[i : min(i + chunk, end)].tobytes())
                start = next_start
        del data
        os.replace(kept, self.paths[train])
        moved = sum(n for _, n in spans)
        self.tokens[train] -= moved
        self.tokens[val] += moved
        self.documents[train] -= len(spans)
        self.documents[val] += len(spans)

    def blocks(self, key: tuple[str, str], seq_len: int) -> Iterator[np.ndarray]:
        n = self.tokens[key] // seq_len
        if n == 0:
            return
        data = np.memmap(self.paths[key], dtype=self.dtype, mode="r")
        for i in range(n):
            yield np.asarray(data[i * seq_len : (i + 1) * seq_len])


class ValCandidates:
    """Per domain, the training documents with the lowest hash scores: just enough to fill one block.

    Which documents these are depends on the texts alone (their scores), not on file order, and
    memory stays bounded by one block's worth of documents per domain.
    """

    def __init__(self, seq_len: int):
        self.seq_len = seq_len
        self.heaps: dict[str, list] = {}  # max-heap by score: (-score, offset, length)
        self.totals: Counter = Counter()

    def offer(self, domain: str, score: float, offset: int, length: int) -> None:
        heap = self.heaps.setdefault(domain, [])
        heapq.heappush(heap, (-score, offset, length))
        self.totals[domain] += length
        # Drop the highest score while the rest still fill a block: they would never be needed.
        while len(heap) > 1 and self.totals[domain] - heap[0][2] >= self.seq_len:
            self.totals[domain] -= heapq.heappop(heap)[2]

    def lowest(self, domain: str, tokens: int) -> list[tuple[int, int]]:
        """(offset, length) of the lowest-scoring documents holding at least `tokens`, sorted by offset."""
        chosen, total = [], 0
        for _neg_score, offset, length in sorted(self.heaps.get(domain, []), key=lambda c: (-c[0], c[1])):
            if total >= tokens:
                break
            chosen.append((offset, length))
            total += length
        return sorted(chosen)


def guarantee_val_block(domains: list[str], spill: SpillFiles, candidates: ValCandidates, seq_len: int) -> dict:
    """Give every domain one validation block, moving its lowest-scoring training documents; returns the moves."""
    moved = {}
    for domain in domains:
        need = seq_len - spill.tokens[("val", domain)]
        spans = candidates.lowest(domain, need) if need > 0 else []
        if spans:
            spill.move_to_val(domain, spans)
        moved[domain] = {"documents": len(spans), "tokens": sum(n for _, n in spans)}
    return moved


def check_sizes(domains: list[str], spill: SpillFiles, seq_len: int, remedy: str = "") -> None:
    """Every domain needs a training block and a validation block, of whole documents; name them all at once."""
    problems = []
    for domain in domains:
        train, val = spill.tokens[("train", domain)], spill.tokens[("val", domain)]
        if train < seq_len or val < seq_len:
            documents = spill.documents[("train", domain)] + spill.documents[("val", domain)]
            problems.append(
                f"'{domain}' has {train + val} tokens in {documents} document(s) "
                f"({train} left for training after {val} for validation)"
            )
    if problems:
        raise MixweightError(
            f"domain(s) too small for one training block and one validation block of --seq-len {seq_len} "
            f"(at least {2 * seq_len} tokens, each block from whole documents): {'; '.join(problems)}. "
            f"Use a smaller --seq-len or more data for these domains{remedy}"
        )
