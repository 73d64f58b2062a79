"""`mixweight data prepare`: real text -> tokenized, packed, per-domain MDS streams + manifest.json.

The result has exactly the layout of the synthetic corpus (``train/<domain>/``, ``val/<domain>/``,
``manifest.json``), so nothing downstream knows or cares where a corpus came from.

How it runs, and why:
1. (``bpe:VOCAB`` only) one pass over the training texts to train the tokenizer.
2. One pass that tokenizes documents (in a process pool when ``num_proc`` > 1, else in
   process; Hugging Face fast tokenizers batch-encode on all cores by themselves), appends EOS,
   and appends the ids to one flat spill file per (split, domain). Memory stays bounded by a
   chunk of documents, whatever the corpus size.
3. Per domain and split: cut the spill file into seq_len blocks (the remainder that does not
   fill a block is dropped and counted) and write them with :func:`write_stream`.
The validation split is a hash of the document text, so a document's split never depends on
file order or on a seed. Every domain is guaranteed one validation block: when the hash puts
too few of a domain's documents in validation (a big domain of few long documents), its
training documents with the lowest hash scores move to validation until one block is
filled; how many moved is recorded in the manifest (``source.moved_to_val``).
"""

from __future__ import annotations

import hashlib
import heapq
import json
import multiprocessing
import os
import shutil
import sys
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Iterator, Optional

import numpy as np
from tqdm.auto import tqdm

from mixweight.core.config import option
from mixweight.data.manifest import DomainSplitStats, Manifest, load_manifest
from mixweight.data.names import NAME_RULE, name_problem
from mixweight.data.output import check_can_write, is_same_corpus, resolve_output, staged_directory
from mixweight.data.readers import check_encodable, describe, get_field, input_fingerprint, iter_records, scan_sources
from mixweight.data.streams import token_dtype, write_stream
from mixweight.data.tokenizer import ByteTokenizer, load_hf_tokenizer, parse_spec, train_bpe
from mixweight.errors import MixweightError

SPLITS = ("train", "val")
CHUNK_DOCS = 512  # documents per tokenization task: big enough to amortize IPC, small enough to bound memory
SPILL_DIR = ".spill"  # inside the staging directory; removed before the corpus is swapped in


def val_score(text: str) -> float:
    """A stable pseudo-random number in [0, 1) from the text alone (blake2b, first 8 bytes)."""
    digest = hashlib.blake2b(text.encode("utf-8", errors="surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def split_of(text: str, val_fraction: float) -> str:
    return "val" if val_score(text) < val_fraction else "train"


def _check_domain_name(name, where: str, field: str) -> str:
    """Domain names become directory names and export entries: one plain, short path component."""
    problem = name_problem(name)
    if problem:
        shown = name if not isinstance(name, str) or len(name) <= 60 else name[:60] + "..."
        raise MixweightError(f"{where}: domain {shown!r} (field '{field}') {problem}; {NAME_RULE}")
    return name


def iter_documents(input_path, domain_field: str, text_field: str) -> Iterator[tuple[str, str]]:
    """(domain, text) for every record; empty or null text comes through as '' for the caller to count."""
    for source, position, record in iter_records(input_path):
        where = describe(source, position)
        domain = _check_domain_name(get_field(record, domain_field, where, "--domain-field"), where, domain_field)
        text = get_field(record, text_field, where, "--text-field")
        if text is None:
            text = ""
        if not isinstance(text, str):
            raise MixweightError(f"{where}: field '{text_field}' holds a {type(text).__name__}, not text")
        check_encodable(text, where, text_field)
        yield domain, text


# --- tokenization: in process, or in a pool of workers ---------------------------------------
_worker_tokenizer = None


def _init_worker(tok) -> None:
    global _worker_tokenizer
    _worker_tokenizer = tok


def _encode_chunk(chunk: tuple[list, list[str]]) -> tuple[list, list[np.ndarray]]:
    keys, texts = chunk
    return keys, _worker_tokenizer.encode_batch(texts)


def _chunks(documents, val_fraction: float, empty: Counter) -> Iterator[tuple[list, list[str]]]:
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


def _check_sizes(domains: list[str], spill: SpillFiles, seq_len: int) -> None:
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
            "Use a smaller --seq-len or more data for these domains"
        )


def prepare_config_hash(
    input_path, domain_field, text_field, tokenizer, tokenizer_fingerprint, seq_len, val_fraction
) -> str:
    """Hash of everything that decides the corpus bytes: input files (names, sizes, mtimes) and options."""
    spec = {
        "kind": "prepare",
        "version": 2,  # 2: every domain gets a validation block
        "input": str(Path(input_path).resolve()),
        "files": input_fingerprint(input_path),
        "domain_field": domain_field,
        "text_field": text_field,
        "tokenizer": str(tokenizer),
        "tokenizer_fingerprint": tokenizer_fingerprint,
        "seq_len": seq_len,
        "val_fraction": val_fraction,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class PrepareConfig:
    """`mixweight data prepare` (and the pipeline's `data: {prepare: {...}}`, which sets out and overwrite)."""

    COMMAND: ClassVar[str] = "data prepare"

    input: Optional[str] = option(
        None,
        "a .jsonl/.json[.gz|.zst] or .parquet file, a `datasets` save_to_disk directory, or a directory of such "
        "files (other files are skipped and listed); required",
        required=True,
    )
    out: Optional[str] = option(
        None,
        "corpus directory to write, outside --input (new, empty, or a corpus to replace with --overwrite), or a "
        "URL to upload to (s3://bucket/corpus, ...); required",
        required=True,
    )
    domain_field: str = option(
        "meta.redpajama_set_name", "record field holding the domain name, dotted for nested fields"
    )
    text_field: str = option("text", "record field holding the document text, dotted for nested fields")
    tokenizer: str = option(
        "byte",
        "byte (UTF-8 bytes + EOS) | PATH (a local Hugging Face tokenizer directory) | bpe:VOCAB (train a "
        "byte-level BPE of VOCAB ids on the training text)",
    )
    seq_len: int = option(512, "tokens per block")
    val_fraction: float = option(
        0.01,
        "fraction of each domain's documents held out for validation, chosen by a hash of the text; in (0, 1), "
        "and every domain gets at least one block",
    )
    num_proc: Optional[int] = option(None, "tokenizer processes; unset or 1 tokenizes in this process")
    overwrite: bool = option(False, "replace a different mixweight corpus already in --out; never other files")

    def validate(self) -> None:
        check_prepare_options(self.seq_len, self.val_fraction, self.num_proc)


def check_prepare_options(seq_len, val_fraction, num_proc) -> None:
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 2:
        raise MixweightError(f"--seq-len {seq_len}: must be an integer >= 2 (a block needs an input and a target)")
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
        # Training and evaluation report per-domain validation loss: a corpus without validation
        # blocks would report nothing (or, worse, 0.0). A tiny fraction costs at most a block per domain.
        raise MixweightError(
            f"--val-fraction {val_fraction}: must be in (0, 1); every domain needs validation "
            "data for its loss (each gets at least one block whatever the fraction, e.g. 0.001)"
        )
    if num_proc is not None and num_proc < 1:
        raise MixweightError(f"--num-proc {num_proc}: must be >= 1 (unset or 1 tokenizes in this process)")


def prepare_corpus(
    input_path,
    out_dir,
    domain_field: str = PrepareConfig.domain_field,
    text_field: str = PrepareConfig.text_field,
    tokenizer: str = PrepareConfig.tokenizer,
    seq_len: int = PrepareConfig.seq_len,
    val_fraction: float = PrepareConfig.val_fraction,
    overwrite: bool = PrepareConfig.overwrite,
    num_proc: int | None = PrepareConfig.num_proc,
    progress: bool = True,
) -> Manifest:
    """Tokenize and pack the records under `input_path` into a corpus at `out_dir`; returns its Manifest.

    Rerunning with the same input files and options on an existing copy is a no-op.
    """
    check_prepare_options(seq_len, val_fraction, num_proc)
    kind, arg = parse_spec(tokenizer)
    sources, skipped_files = scan_sources(input_path)  # fails early on a missing path or unsupported type
    out_dir = resolve_output(out_dir, input_path)
    hf_tok = load_hf_tokenizer(arg) if kind == "hf" else None
    fingerprint = hf_tok.info["fingerprint"] if hf_tok else None  # bpe and byte are fixed by the options
    config_hash = prepare_config_hash(
        input_path, domain_field, text_field, tokenizer, fingerprint, seq_len, val_fraction
    )
    if is_same_corpus(out_dir, config_hash):
        return load_manifest(out_dir)
    check_can_write(out_dir, overwrite)
    show = progress and sys.stderr.isatty()

    with staged_directory(out_dir) as staging:
        if kind == "bpe":
            texts = (
                t
                for d, t in iter_documents(input_path, domain_field, text_field)
                if t.strip() and split_of(t, val_fraction) == "train"
            )
            tok = train_bpe(tqdm(texts, desc="train bpe", unit="doc", disable=not show), arg, staging)
        else:
            tok = hf_tok or ByteTokenizer()

        dtype = token_dtype(tok.vocab_size)
        spill = SpillFiles(staging / SPILL_DIR, dtype, tok.eos_id)
        candidates = ValCandidates(seq_len)
        empty: Counter = Counter()
        chunks = _chunks(iter_documents(input_path, domain_field, text_field), val_fraction, empty)
        with tqdm(desc="tokenize", unit="doc", disable=not show) as bar:
            for keys, encoded in encoded_chunks(tok, chunks, num_proc):
                for (split, domain, score), ids in zip(keys, encoded):
                    offset = spill.append((split, domain), ids)
                    if split == "train":
                        candidates.offer(domain, score, offset, len(ids) + 1)
                bar.update(len(keys))
        spill.close()

        domains = sorted({d for _, d in spill.tokens} | set(empty))
        if not domains:
            raise MixweightError(f"--input {input_path}: no records found")
        # (bpe: the moved documents were among the tokenizer's training texts; they are a block's worth.)
        moved = guarantee_val_block(domains, spill, candidates, seq_len)
        _check_sizes(domains, spill, seq_len)

        splits: dict[str, dict[str, DomainSplitStats]] = {s: {} for s in SPLITS}
        skipped = {}
        total = sum(spill.tokens[k] // seq_len for k in spill.tokens)
        with tqdm(total=total, desc="write streams", unit="block", disable=not show) as bar:
            for domain_id, domain in enumerate(domains):
                dropped = {}
                for split in SPLITS:
                    key, rel = (split, domain), f"{split}/{domain}"
                    n = write_stream(staging / rel, spill.blocks(key, seq_len), domain_id, seq_len, tok.vocab_size)
                    bar.update(n)
                    splits[split][domain] = DomainSplitStats(
                        documents=spill.documents[key], tokens=n * seq_len, blocks=n, path=rel
                    )
                    dropped[split] = spill.tokens[key] - n * seq_len
                skipped[domain] = {"empty_documents": empty[domain], "remainder_tokens": dropped}
        shutil.rmtree(staging / SPILL_DIR)

        manifest = Manifest(
            domains=domains,
            seq_len=seq_len,
            vocab_size=tok.vocab_size,
            eos_id=tok.eos_id,
            tokenizer=dict(tok.info),
            splits=splits,
            source={
                "kind": "prepare",
                "input": str(Path(input_path).resolve()),
                "num_files": len(sources),
                "domain_field": domain_field,
                "text_field": text_field,
                "tokenizer": str(tokenizer),
                "val_fraction": val_fraction,
                "skipped_files": skipped_files,
                "moved_to_val": moved,
            },
            config_hash=config_hash,
            irreducible_loss={},
            skipped=skipped,
        )
        manifest.write(staging)
    return manifest


def report_lines(manifest: Manifest) -> list[str]:
    """What `data prepare` did besides the obvious: input files it skipped, documents it moved to validation."""
    lines = []
    skipped = manifest.source.get("skipped_files") or []
    if skipped:
        lines.append(
            f"skipped {len(skipped)} file(s) under {manifest.source.get('input')} that are not a supported "
            f"input: {', '.join(skipped)}"
        )
    for domain, move in (manifest.source.get("moved_to_val") or {}).items():
        if move.get("documents"):
            lines.append(
                f"domain '{domain}': moved {move['documents']} document(s) ({move['tokens']} tokens) "
                "with the lowest hash scores from train to validation, so it has one validation block"
            )
    return lines
