"""`manifest.json`: the contract between a prepared corpus and everything that reads it.

A corpus directory holds one MDS stream per domain and split (``train/<domain>/``,
``val/<domain>/``) and this manifest. Readers never look inside the streams to learn
what the corpus is: domains, sizes, vocabulary and tokenizer all come from here.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mixweight.core.jsonio import write_json_atomic
from mixweight.data.names import NAME_RULE, name_problem
from mixweight.data.streams import check_shard_hashes, shard_stamp, verify_stream
from mixweight.errors import MixweightError

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
    # domains made by clustering (`data prepare --domains cluster:K`): the artifact under `path` by sha256, and each
    # cluster's description, documents and share; empty for a corpus whose domains came from labels
    clustering: dict = field(default_factory=dict)
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
        raw = asdict(self)
        if not raw["clustering"]:
            del raw["clustering"]  # written only when set: corpora with labelled domains keep their bytes
        return raw

    def write(self, corpus_dir: str | Path) -> Path:
        """Write atomically: a reader never sees a half-written manifest."""
        return write_json_atomic(Path(corpus_dir) / MANIFEST_NAME, self.to_json())

    @classmethod
    def from_json(cls, raw: dict, where: str = MANIFEST_NAME) -> "Manifest":
        if not isinstance(raw, dict):
            raise MixweightError(f"{where}: expected a JSON object, got {type(raw).__name__}; re-create the corpus")
        required = ["domains", "seq_len", "vocab_size", "tokenizer", "splits"]
        missing = [k for k in required if k not in raw]
        if missing:
            raise MixweightError(f"{where}: missing field(s) {missing}; a mixweight manifest has {required}")
        domains = raw["domains"]
        if not isinstance(domains, list) or not domains:
            raise MixweightError(f"{where}: 'domains' must be a non-empty list of names, got {domains!r}")
        for domain in domains:
            problem = name_problem(domain)
            if problem:  # a hand-edited manifest meets the rule `data prepare` enforces
                raise MixweightError(f"{where}: domain {domain!r} {problem}; {NAME_RULE}")
        if len(set(domains)) != len(domains):
            raise MixweightError(f"{where}: 'domains' lists a name twice: {domains}")
        for key in ("seq_len", "vocab_size"):
            if not isinstance(raw[key], int) or isinstance(raw[key], bool) or raw[key] < 2:
                raise MixweightError(f"{where}: '{key}' must be an integer >= 2, got {raw[key]!r}")
        if not isinstance(raw["splits"], dict) or not isinstance(raw["tokenizer"], dict):
            raise MixweightError(f"{where}: 'splits' and 'tokenizer' must be JSON objects")
        splits = {}
        for split, per_domain in raw["splits"].items():
            try:
                splits[split] = {d: DomainSplitStats(**stats) for d, stats in per_domain.items()}
            except (AttributeError, TypeError) as exc:
                raise MixweightError(
                    f"{where}: split '{split}' is malformed ({exc}); each domain needs "
                    "{documents, tokens, blocks, path}"
                ) from exc
        for split in SPLITS:
            absent = [d for d in domains if d not in splits.get(split, {})]
            if absent:
                raise MixweightError(f"{where}: split '{split}' has no entry for domain(s) {absent}")
            for d in domains:
                stats = splits[split][d]
                inside = (
                    isinstance(stats.path, str)
                    and stats.path
                    and not Path(stats.path).is_absolute()
                    and ".." not in Path(stats.path).parts
                )  # streams live inside the corpus directory
                if not inside or not all(
                    isinstance(getattr(stats, k), int)
                    and not isinstance(getattr(stats, k), bool)
                    and getattr(stats, k) >= 0
                    for k in ("blocks", "tokens", "documents")
                ):
                    raise MixweightError(
                        f"{where}: split '{split}', domain '{d}': expected a path inside the corpus "
                        f"(like '{split}/{d}') and counts >= 0, got path {stats.path!r}, "
                        f"blocks {stats.blocks!r}, tokens {stats.tokens!r}, "
                        f"documents {stats.documents!r}"
                    )
        optional = {}
        for key in ("source", "irreducible_loss", "skipped", "clustering"):
            value = raw.get(key) or {}
            if not isinstance(value, dict):
                raise MixweightError(f"{where}: '{key}' must be a JSON object, got {type(value).__name__}")
            optional[key] = dict(value)
        floors = optional["irreducible_loss"]
        if any(v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool)) for v in floors.values()):
            raise MixweightError(f"{where}: 'irreducible_loss' values must be numbers or null, got {floors}")
        eos_id = raw.get("eos_id")
        if eos_id is not None and (
            not isinstance(eos_id, int) or isinstance(eos_id, bool) or not 0 <= eos_id < raw["vocab_size"]
        ):
            raise MixweightError(f"{where}: 'eos_id' must be null or a token id below vocab_size, got {eos_id!r}")
        return cls(
            domains=list(domains),
            seq_len=int(raw["seq_len"]),
            vocab_size=int(raw["vocab_size"]),
            eos_id=eos_id,
            tokenizer=dict(raw["tokenizer"]),
            splits=splits,
            config_hash=str(raw.get("config_hash", "")),
            format=str(raw.get("format", FORMAT)),
            **optional,
        )


def load_manifest(corpus_dir: str | Path, fetched_lazily: bool = False) -> Manifest:
    """Load and check a local corpus directory's manifest, with errors that say what to run.

    `fetched_lazily`: the directory is the cache copy of a corpus URL, whose training shards
    arrive as training reads them (`mixweight.data.corpus.open_corpus` says so; it is the one
    reader of URLs and of `synthetic`).
    """
    corpus_dir = Path(corpus_dir)
    path = corpus_dir / MANIFEST_NAME
    if not path.is_file():
        raise MixweightError(
            f"{corpus_dir}: no {MANIFEST_NAME} here; make a corpus with "
            f"`mixweight data synth --out {corpus_dir}` or `mixweight data prepare --input ... --out {corpus_dir}`"
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MixweightError(f"{path}: not valid JSON ({exc}); re-create the corpus") from exc
    manifest = Manifest.from_json(raw, where=str(path))
    _check_streams(corpus_dir, path, manifest, lazily=fetched_lazily)
    return manifest


def check_hashes(corpus_dir: str | Path, manifest: Manifest) -> int:
    """Every shard's bytes against the hash its index records, where that is cheap (`streams.check_shard_hashes`:
    the validation shards always, the training ones when the corpus is small); returns how many were hashed."""
    where = Path(corpus_dir) / MANIFEST_NAME
    return check_shard_hashes(
        [
            (manifest.stream_dir(corpus_dir, split, d), f"{where}: domain '{d}' ({split})", split == "val")
            for split in SPLITS
            for d in manifest.domains
        ]
    )


def shards_stamp(corpus_dir: str | Path, manifest: Manifest) -> str:
    """`streams.shard_stamp` of every stream: what a run pins of its corpus's shard files."""
    return shard_stamp([manifest.stream_dir(corpus_dir, split, d) for split in SPLITS for d in manifest.domains])


def _check_streams(corpus_dir: Path, path: Path, manifest: Manifest, lazily: bool) -> None:
    """Every stream is there and holds what the manifest says (training shards may be pending with `lazily`)."""
    for split in SPLITS:
        for domain in manifest.domains:
            stream = manifest.stream_dir(corpus_dir, split, domain)
            where = f"{path}: domain '{domain}' ({split})"
            if not (stream / "index.json").is_file():
                raise MixweightError(
                    f"{where} should be an MDS stream at {stream}, but {stream / 'index.json'} is missing; "
                    "re-create the corpus"
                )
            samples = verify_stream(stream, where, manifest.seq_len, fetched_lazily=lazily and split == "train")
            if split == "train" and samples == 0:
                raise MixweightError(f"{where} is empty: no training blocks; drop the domain or add data")
            if split == "val" and samples == 0:
                # Every command reports per-domain validation loss; zero blocks would read as a loss of 0.0.
                raise MixweightError(
                    f"{where} is empty: no validation blocks, so its loss cannot be measured; "
                    "re-create the corpus with `mixweight data prepare --val-fraction` > 0"
                )
            if samples != manifest.splits[split][domain].blocks:
                raise MixweightError(
                    f"{where}: the stream holds {samples} blocks, the manifest says "
                    f"{manifest.splits[split][domain].blocks}; re-create the corpus"
                )
