"""`manifest.json`: the contract between a prepared corpus and everything that reads it.

A corpus directory holds one MDS stream per domain and split (``train/<domain>/``,
``val/<domain>/``) and this manifest. Readers never look inside the streams to learn
what the corpus is: domains, sizes, vocabulary and tokenizer all come from here.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mixweight.data.streams import verify_stream
from mixweight.errors import MixweightError
from mixweight.jsonio import write_json_atomic

MANIFEST_NAME = "manifest.json"
FORMAT = "mixweight-corpus/1"
SPLITS = ("train", "val")


@dataclass
class DomainSplitStats:
    """Counts for one domain in one split."""

    documents: int
    tokens: int  # tokens written into blocks (what training sees)
    blocks: int
    path: str  # stream directory, relative to the corpus directory


@dataclass
class Manifest:
    domains: list[str]
    seq_len: int
    vocab_size: int
    eos_id: int | None
    tokenizer: dict  # {"kind": ..., "fingerprint": ..., optional "path": ...}
    splits: dict[str, dict[str, DomainSplitStats]]
    source: dict  # how the corpus was made (synthetic parameters or input path and options)
    config_hash: str  # hash of everything that determines the bytes of the corpus
    irreducible_loss: dict[str, float | None] = field(default_factory=dict)
    skipped: dict[str, dict] = field(default_factory=dict)  # per-domain counts of dropped input
    format: str = FORMAT

    # --- derived views -------------------------------------------------------------
    def stream_dir(self, root: str | Path, split: str, domain: str) -> Path:
        return Path(root) / self.splits[split][domain].path

    def train_tokens(self) -> dict[str, int]:
        return {d: self.splits["train"][d].tokens for d in self.domains}

    def natural_weights(self) -> dict[str, float]:
        """Domain weights proportional to each domain's training token count."""
        tokens = self.train_tokens()
        total = sum(tokens.values())
        return {d: tokens[d] / total for d in self.domains}

    def domain_id(self, domain: str) -> int:
        return self.domains.index(domain)

    # --- io -------------------------------------------------------------------------
    def to_json(self) -> dict:
        return asdict(self)

    def write(self, corpus_dir: str | Path) -> Path:
        """Write atomically: a reader never sees a half-written manifest."""
        return write_json_atomic(Path(corpus_dir) / MANIFEST_NAME, self.to_json())

    @classmethod
    def from_json(cls, raw: dict, where: str = MANIFEST_NAME) -> "Manifest":
        required = ["domains", "seq_len", "vocab_size", "tokenizer", "splits"]
        missing = [k for k in required if k not in raw]
        if missing:
            raise MixweightError(f"{where}: missing field(s) {missing}; a mixweight manifest has {required}")
        splits = {}
        for split, per_domain in raw["splits"].items():
            splits[split] = {d: DomainSplitStats(**stats) for d, stats in per_domain.items()}
        for split in SPLITS:
            absent = [d for d in raw["domains"] if d not in splits.get(split, {})]
            if absent:
                raise MixweightError(f"{where}: split '{split}' has no entry for domain(s) {absent}")
        return cls(
            domains=list(raw["domains"]),
            seq_len=int(raw["seq_len"]),
            vocab_size=int(raw["vocab_size"]),
            eos_id=raw.get("eos_id"),
            tokenizer=dict(raw["tokenizer"]),
            splits=splits,
            source=dict(raw.get("source", {})),
            config_hash=str(raw.get("config_hash", "")),
            irreducible_loss=dict(raw.get("irreducible_loss", {})),
            skipped=dict(raw.get("skipped", {})),
            format=str(raw.get("format", FORMAT)),
        )


def load_manifest(corpus_dir: str | Path) -> Manifest:
    """Load and check a corpus directory's manifest, with errors that say what to run."""
    corpus_dir = Path(corpus_dir)
    path = corpus_dir / MANIFEST_NAME
    if not path.is_file():
        raise MixweightError(
            f"{corpus_dir}: no {MANIFEST_NAME} here; make a corpus with "
            f"`mixweight data synth --out {corpus_dir}` or `mixweight data prepare --input ... --out {corpus_dir}`"
        )
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise MixweightError(f"{path}: not valid JSON ({exc}); re-create the corpus") from exc
    manifest = Manifest.from_json(raw, where=str(path))
    for split in SPLITS:
        for domain in manifest.domains:
            stream = manifest.stream_dir(corpus_dir, split, domain)
            where = f"{path}: domain '{domain}' ({split})"
            if not (stream / "index.json").is_file():
                raise MixweightError(
                    f"{where} should be an MDS stream at {stream}, but {stream / 'index.json'} is missing; "
                    "re-create the corpus"
                )
            samples = verify_stream(stream, where)
            if split == "train" and samples == 0:
                raise MixweightError(f"{where} is empty: no training blocks; drop the domain or add data")
            if samples != manifest.splits[split][domain].blocks:
                raise MixweightError(f"{where}: the stream holds {samples} blocks, the manifest says "
                                     f"{manifest.splits[split][domain].blocks}; re-create the corpus")
    return manifest
