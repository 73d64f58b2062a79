"""The tokenizing pass of `data prepare`: documents -> chunks keyed by their split -> token ids.

A document's split (train or val) is a hash of its text alone (`val_score`), so it never depends on
file order or on a seed. Chunks of CHUNK_DOCS documents are encoded in order (so the output bytes never
depend on scheduling), in this process or in a spawn pool of `num_proc` workers; memory stays bounded by
the chunks in flight.
"""

from __future__ import annotations

import hashlib
import multiprocessing
from collections import Counter, deque
from typing import Iterator

import numpy as np

CHUNK_DOCS = 512  # documents per tokenization task: big enough to amortize IPC, small enough to bound memory


def val_score(text: str) -> float:
    """A stable pseudo-random number in [0, 1) from the text alone (blake2b, first 8 bytes)."""
    digest = hashlib.blake2b(text.encode("utf-8", errors="surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def split_of(text: str, val_fraction: float) -> str:
    return "val" if val_score(text) < val_fraction else "train"


# --- tokenization: in process, or in a pool of workers ---------------------------------------
_worker_tokenizer = None


def _init_worker(tok) -> None:
    global _worker_tokenizer
    _worker_tokenizer = tok


def _encode_chunk(chunk: tuple[list, list[str]]) -> tuple[list, list[np.ndarray]]:
    keys, texts = chunk
    return keys, _worker_tokenizer.encode_batch(texts)


def document_chunks(documents, val_fraction: float, empty: Counter) -> Iterator[tuple[list, list[str]]]:
    """Group non-empty documents into chunks of ((split, domain, score) keys, texts); count the empty ones."""
    keys, texts = [], []
    for domain, text in documents:
        if not text.strip():
            empty[domain] += 1
            continue
        score = val_score(text)
        keys.append(("val" if score < val_fraction else "train", domain, score))
        texts.append(text)
        if len(texts) >= CHUNK_DOCS:
            yield keys, texts
            keys, texts = [], []
    if texts:
        yield keys, texts


def encoded_chunks(tok, chunks, num_proc: int | None) -> Iterator[tuple[list, list[np.ndarray]]]:
    """Encode chunks in order (so output bytes never depend on scheduling), at most 2*num_proc in flight."""
    if not num_proc or num_proc <= 1:
        for keys, texts in chunks:
            yield keys, tok.encode_batch(texts)
        return
    # spawn, not fork: the parent may hold Rust (tokenizers) or torch thread pools that fork would corrupt.
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(num_proc, initializer=_init_worker, initargs=(tok,)) as pool:
        pending: deque = deque()
        for chunk in chunks:
            pending.append(pool.apply_async(_encode_chunk, (chunk,)))
            if len(pending) >= 2 * num_proc:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
