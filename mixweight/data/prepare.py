"""`mixweight data prepare`: real text -> tokenized, packed, per-domain MDS streams + manifest.json.

The result has exactly the layout of the synthetic corpus (``train/<domain>/``, ``val/<domain>/``,
``manifest.json``), so nothing downstream knows or cares where a corpus came from.

How it runs, and why:
1. (``bpe:VOCAB`` only) one pass over the training texts to train the tokenizer.
2. One pass that tokenizes documents (``tokenize_pass.py``: in a process pool when ``num_proc`` > 1,
   else in process; Hugging Face fast tokenizers batch-encode on all cores by themselves), appends EOS,
   and appends the ids to one flat spill file per (split, domain) (``spill.py``). Memory stays bounded
   by a chunk of documents, whatever the corpus size.
3. Per domain and split: cut the spill file into seq_len blocks (the remainder that does not
   fill a block is dropped and counted) and write them with :func:`write_stream`.
The validation split is a hash of the document text, so a document's split never depends on
file order or on a seed. Every domain is guaranteed one validation block: when the hash puts
too few of a domain's documents in validation (a big domain of few long documents), its
training documents with the lowest hash scores move to validation until one block is
filled; how many moved is recorded in the manifest (``source.moved_to_val``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Optional

from tqdm.auto import tqdm

from mixweight.core.config import build_config, option
from mixweight.data.cluster_names import report_lines as cluster_report_lines
from mixweight.data.cluster_options import DOMAINS_DIR, ClusterOptions, artifact_sha256, cluster_options_of
from mixweight.data.cluster_options import config_key as cluster_key
from mixweight.data.clustering import Assignment, build_clustering
from mixweight.data.manifest import DomainSplitStats, Manifest, load_manifest
from mixweight.data.output import check_can_write, is_same_corpus, resolve_output, staged_directory
from mixweight.data.readers import input_fingerprint, iter_documents, iter_texts, scan_sources
from mixweight.data.spill import SpillFiles, ValCandidates, check_sizes, guarantee_val_block
from mixweight.data.streams import token_dtype, write_stream
from mixweight.data.tokenize_pass import document_chunks, encoded_chunks, split_of
from mixweight.data.tokenizer import ByteTokenizer, load_hf_tokenizer, parse_spec, train_bpe
from mixweight.errors import MixweightError

SPLITS = ("train", "val")
SPILL_DIR = ".spill"  # inside the staging directory; removed before the corpus is swapped in


def prepare_config_hash(
    input_path, domain_field, text_field, tokenizer, tokenizer_fingerprint, seq_len, val_fraction, domains=None
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
    if domains is not None:  # clustered domains (cluster_options.config_key); absent otherwise, so older hashes stand
        spec["domains"] = domains
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
    # domains made by clustering (--domains cluster:K, --domains-from, ...): ClusterOptions' fields, defined once
    for _field in dataclasses.fields(ClusterOptions):
        __annotations__[_field.name] = ClusterOptions.__annotations__[_field.name]
        vars()[_field.name] = dataclasses.field(default=_field.default, metadata=_field.metadata)
    del _field

    def validate(self) -> None:
        check_prepare_options(self.seq_len, self.val_fraction, self.num_proc)
        cluster_options_of(self).validate()


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
    **cluster_options,
) -> Manifest:
    """Tokenize and pack the records under `input_path` into a corpus at `out_dir`; returns its Manifest.

    `cluster_options`: the keys of :class:`ClusterOptions` (``domains="cluster:K"``, ``domains_from=CORPUS``,
    ...): domains made by clustering the documents instead of read from `domain_field` (see clustering.py).
    Rerunning with the same input files and options on an existing copy is a no-op.
    """
    check_prepare_options(seq_len, val_fraction, num_proc)
    cluster = build_config(ClusterOptions, cluster_options, "data prepare")
    if cluster.active:
        domain_field = None  # not read: the clustering decides every document's domain
    kind, arg = parse_spec(tokenizer)
    sources, skipped_files = scan_sources(input_path)  # fails early on a missing path or unsupported type
    out_dir = resolve_output(out_dir, input_path)
    hf_tok = load_hf_tokenizer(arg) if kind == "hf" else None
    fingerprint = hf_tok.info["fingerprint"] if hf_tok else None  # bpe and byte are fixed by the options
    domains_key = cluster_key(cluster) if cluster.active else None
    config_hash = prepare_config_hash(
        input_path, domain_field, text_field, tokenizer, fingerprint, seq_len, val_fraction, domains_key
    )
    if is_same_corpus(out_dir, config_hash):
        return load_manifest(out_dir)
    check_can_write(out_dir, overwrite)
    show = progress and sys.stderr.isatty()

    with staged_directory(out_dir) as staging:
        assignment = None
        if cluster.active:  # fit the clustering (or copy --domains-from's) first: the tokenizing pass assigns domains

            def plain_texts():
                return (t for _, t in iter_texts(input_path, text_field))

            assignment = Assignment(build_clustering(cluster, staging, plain_texts, show), cluster.compare_field)
        if kind == "bpe":
            documents = (
                iter_texts(input_path, text_field)
                if assignment
                else iter_documents(input_path, domain_field, text_field)
            )
            texts = (t for d, t in documents if t.strip() and split_of(t, val_fraction) == "train")
            tok = train_bpe(tqdm(texts, desc="train bpe", unit="doc", disable=not show), arg, staging)
        else:
            tok = hf_tok or ByteTokenizer()

        dtype = token_dtype(tok.vocab_size)
        spill = SpillFiles(staging / SPILL_DIR, dtype, tok.eos_id)
        candidates = ValCandidates(seq_len)
        empty: Counter = Counter()
        if assignment:
            documents = assignment.stream(iter_texts(input_path, text_field, cluster.compare_field))
        else:
            documents = iter_documents(input_path, domain_field, text_field)
        chunks = document_chunks(documents, val_fraction, empty)
        with tqdm(desc="tokenize", unit="doc", disable=not show) as bar:
            for keys, encoded in encoded_chunks(tok, chunks, num_proc):
                for (split, domain, score), ids in zip(keys, encoded):
                    offset = spill.append((split, domain), ids)
                    if split == "train":
                        candidates.offer(domain, score, offset, len(ids) + 1)
                bar.update(len(keys))
        spill.close()

        clusters = assignment.clustering.names if assignment else []  # every cluster, even one left empty
        domains = sorted({d for _, d in spill.tokens} | set(empty) | set(clusters))
        if not domains:
            raise MixweightError(f"--input {input_path}: no records found")
        # (bpe: the moved documents were among the tokenizer's training texts; they are a block's worth.)
        moved = guarantee_val_block(domains, spill, candidates, seq_len)
        check_sizes(domains, spill, seq_len, " (or a smaller K for --domains cluster:K)" if assignment else "")

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
            clustering=assignment.manifest_block(artifact_sha256(staging / DOMAINS_DIR)) if assignment else {},
        )
        manifest.write(staging)
    if assignment:
        assignment.print_notes()
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
    if manifest.clustering:
        lines += cluster_report_lines(manifest.clustering)
    return lines
