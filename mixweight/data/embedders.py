"""Document embeddings for clustering a corpus into domains: hashed TF-IDF + truncated SVD, or a local encoder.

Both embedders answer the same small interface: ``embed(texts) -> float32 [n, d]`` with unit-length
rows (k-means on the sphere: nearest centroid by cosine), ``spec`` (JSON: everything that defines
the embedding; recorded in the clustering artifact and hashed into the corpus's config hash) and
``arrays()`` (the fitted numbers, written with safetensors). Nothing is pickled: an artifact is
JSON + safetensors, and loading one runs no code.

- ``tfidf`` (the default; CPU, scikit-learn, nothing to download): scikit-learn's HashingVectorizer
  (stateless: its parameters are the whole of it) counts words and punctuation runs into 2^18 buckets; only the buckets
  the fitting sample used are kept (``columns``); sublinear TF x the sample's IDF, L2-normalised,
  projected on the sample's first ``DIMS`` singular vectors (TruncatedSVD: latent semantic analysis),
  L2-normalised again. Cost: one hashing pass and a sparse x dense product per document.
- ``PATH``: a local Hugging Face encoder (``save_pretrained`` directory, safetensors weights, no custom
  code): the mean of the last hidden states over the document's tokens (first ``MAX_TOKENS``), in
  batches, on the GPU when there is one. Its ``spec`` holds the directory and a sha256 of its files.

Every document is embedded from its first ``EMBED_CHARS`` characters: its topic and format show early,
and it bounds the memory of a sample whatever the documents' lengths.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import numpy as np

from mixweight.errors import MixweightError

TFIDF = "tfidf"
EMBED_CHARS = 8192  # characters of a document that are embedded
N_FEATURES = 2**18  # hashing buckets (scikit-learn's text-clustering example uses the same)
DIMS = 100  # SVD dimensions: the usual choice for latent semantic analysis before k-means
# words of two or more characters (scikit-learn's default) and runs of punctuation: `):`, `::`, `</`, `##` tell code,
# reStructuredText, markup and Markdown apart where their words do not (ARI 0.49 -> 0.64 on benchmarks/clustering.py)
TOKEN_PATTERN = r"(?u)\b\w\w+\b|[^\w\s]+"
WORD_PATTERN = r"(?u)\b\w\w+\b"  # words only: what names and descriptions are made of
EMBED_BATCH = 1024  # documents per TF-IDF batch
ENCODER_BATCH = 32  # documents per encoder forward
MAX_TOKENS = 512  # tokens per document an encoder sees


def needs_sklearn(what: str):
    """scikit-learn (the `cluster` extra), or one line saying how to get it."""
    try:
        import sklearn  # noqa: F401
    except ImportError as exc:
        raise MixweightError(
            f"{what} needs scikit-learn: pip install 'mixweight[cluster]' (or pip install scikit-learn)"
        ) from exc


def unit_rows(matrix: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (an all-zero row stays zero: a document with no known word)."""
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return (matrix / np.where(norms > 0, norms, 1)).astype(np.float32)


class TfidfSvdEmbedder:
    """Hashed TF-IDF + truncated SVD; `fit` on a sample, then `embed` any number of documents."""

    def __init__(self, spec: dict, columns: np.ndarray, idf: np.ndarray, components: np.ndarray):
        self.spec, self.columns, self.idf, self.components = spec, columns, idf, components
        self.position = np.full(spec["n_features"], -1, dtype=np.int64)  # bucket -> kept column, -1: unseen
        self.position[columns] = np.arange(len(columns))

    @staticmethod
    def default_spec() -> dict:
        return {
            "kind": TFIDF,
            "n_features": N_FEATURES,
            "token_pattern": TOKEN_PATTERN,
            "lowercase": True,
            "ngram_range": [1, 1],
            "sublinear_tf": True,
            "embed_chars": EMBED_CHARS,
        }

    @classmethod
    def fit(cls, texts: list[str], seed: int) -> "TfidfSvdEmbedder":
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfTransformer

        spec = cls.default_spec()
        counts = _counts(spec, texts)
        columns = np.unique(counts.indices).astype(np.int64)
        counts = counts[:, columns]
        idf = TfidfTransformer(sublinear_tf=True).fit(counts).idf_.astype(np.float32)
        weighted = _tfidf(counts, idf)
        dims = max(1, min(DIMS, len(columns) - 1, len(texts) - 1))
        svd = TruncatedSVD(n_components=dims, algorithm="randomized", random_state=seed).fit(weighted)
        spec["dims"] = dims
        return cls(spec, columns, idf, svd.components_.astype(np.float32))

    def embed(self, texts: list[str]) -> np.ndarray:
        counts = _counts(self.spec, texts)
        kept = self.position[counts.indices]  # buckets the sample never used carry no SVD direction: dropped
        from scipy.sparse import csr_matrix

        rows = np.repeat(np.arange(counts.shape[0]), np.diff(counts.indptr))
        mask = kept >= 0
        counts = csr_matrix(
            (counts.data[mask], (rows[mask], kept[mask])), shape=(counts.shape[0], len(self.columns)), dtype=np.float32
        )
        return unit_rows(np.asarray(_tfidf(counts, self.idf) @ self.components.T))

    def arrays(self) -> dict[str, np.ndarray]:
        return {"tfidf.columns": self.columns, "tfidf.idf": self.idf, "tfidf.components": self.components}

    @classmethod
    def from_arrays(cls, spec: dict, arrays: dict[str, np.ndarray], where: str) -> "TfidfSvdEmbedder":
        known = set(cls.default_spec()) | {"dims"}
        if set(spec) != known:
            raise MixweightError(f"{where}: the tfidf embedding spec has keys {sorted(spec)}, expected {sorted(known)}")
        try:
            columns, idf, components = (arrays[k] for k in ("tfidf.columns", "tfidf.idf", "tfidf.components"))
        except KeyError as exc:
            raise MixweightError(f"{where}: array {exc} is missing; re-create the clustering") from None
        fits = (
            columns.ndim == 1
            and idf.shape == columns.shape
            and components.shape == (spec["dims"], len(columns))
            and (len(columns) == 0 or 0 <= columns.min() and columns.max() < spec["n_features"])
        )
        if not fits:
            raise MixweightError(
                f"{where}: the tfidf arrays do not fit together (columns {columns.shape}, idf {idf.shape}, "
                f"components {components.shape}, dims {spec['dims']}); re-create the clustering"
            )
        return cls(spec, columns.astype(np.int64), idf.astype(np.float32), components.astype(np.float32))


def _counts(spec: dict, texts: list[str]):
    """Word counts per hashing bucket: scikit-learn's HashingVectorizer, rebuilt from its parameters (stateless)."""
    from sklearn.feature_extraction.text import HashingVectorizer

    hasher = HashingVectorizer(
        n_features=spec["n_features"],
        token_pattern=spec["token_pattern"],
        lowercase=spec["lowercase"],
        ngram_range=tuple(spec["ngram_range"]),
        alternate_sign=False,
        norm=None,
        dtype=np.float32,
    )
    return hasher.transform([t[: spec["embed_chars"]] for t in texts]).tocsr()


def _tfidf(counts, idf: np.ndarray):
    """Sublinear TF (1 + log count) x IDF, rows L2-normalised: scikit-learn's TfidfTransformer formula."""
    from sklearn.preprocessing import normalize

    counts = counts.astype(np.float32, copy=True)
    np.log(counts.data, out=counts.data)
    counts.data += 1.0
    counts.data *= idf[counts.indices]
    return normalize(counts, norm="l2", copy=False)


def encoder_fingerprint(path: Path) -> str:
    """sha256 over the names and bytes of every file in the encoder directory (weights, config, tokenizer)."""
    files = sorted(p for p in path.rglob("*") if p.is_file())
    stats = tuple((f.relative_to(path).as_posix(), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    return _fingerprint(path, stats)


@functools.lru_cache(maxsize=8)
def _fingerprint(path: Path, stats: tuple) -> str:
    """Read once per process for unchanged files (names, sizes, mtimes): the config hash, the pipeline's stage key
    and the loaded embedder all ask, and an encoder's weights can be gigabytes."""
    digest = hashlib.sha256()
    for name, _size, _mtime in stats:
        digest.update(name.encode() + b"\0")
        with (path / name).open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def check_encoder_dir(path: str | Path, flag: str = "--embed") -> Path:
    """The resolved directory of a local encoder, refused (one line) unless its config.json asks for no custom code."""
    from mixweight.core.model import refuse_custom_code

    path = Path(path).expanduser().resolve()
    config = path / "config.json"
    if not path.is_dir() or not config.is_file():
        raise MixweightError(
            f"{flag} {path}: not a Hugging Face model directory (no config.json); expected '{TFIDF}' or "
            "a local encoder directory written by save_pretrained (safetensors weights and a tokenizer)"
        )
    try:
        raw = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MixweightError(f"{flag} {config}: not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise MixweightError(f"{flag} {config}: not a Hugging Face config (expected a JSON object)")
    refuse_custom_code(raw, f"{flag} {config}")
    return path


class EncoderEmbedder:
    """Mean-pooled last hidden states of a local Hugging Face encoder, in batches, on the GPU when there is one."""

    def __init__(self, path: str | Path, flag: str = "--embed"):
        path = check_encoder_dir(path, flag)
        import torch
        from transformers import AutoModel, AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
            model = AutoModel.from_pretrained(
                str(path), local_files_only=True, trust_remote_code=False, use_safetensors=True
            )
        except Exception as exc:  # noqa: BLE001 - transformers raises OSError, ValueError, KeyError, ... for bad dirs
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise MixweightError(
                f"{flag} {path}: cannot load an encoder and its tokenizer from it ({reason}); expected a "
                "save_pretrained directory with safetensors weights and a tokenizer"
            ) from None
        if tokenizer.pad_token is None:  # GPT-style tokenizers have none; the mask ignores padding anyway
            if tokenizer.eos_token is None:
                raise MixweightError(f"{flag} {path}: the tokenizer has neither a pad nor an eos token to pad with")
            tokenizer.pad_token = tokenizer.eos_token
        limits = [MAX_TOKENS, tokenizer.model_max_length]
        limits += [getattr(model.config, key, None) for key in ("max_position_embeddings", "n_positions")]
        self.max_tokens = int(min(v for v in limits if isinstance(v, int) and v > 0))
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.spec = {
            "kind": "encoder",
            "path": str(path),
            "fingerprint": encoder_fingerprint(path),
            "pooling": "mean",
            "max_tokens": self.max_tokens,
            "embed_chars": EMBED_CHARS,
        }

    def embed(self, texts: list[str]) -> np.ndarray:
        import torch

        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), ENCODER_BATCH):
                batch = self.tokenizer(
                    [t[:EMBED_CHARS] for t in texts[start : start + ENCODER_BATCH]],
                    padding=True,
                    truncation=True,
                    max_length=self.max_tokens,
                    return_tensors="pt",
                ).to(self.device)
                hidden = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])[0]
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
                out.append(pooled.float().cpu().numpy())
        return unit_rows(np.concatenate(out) if out else np.zeros((0, 1), np.float32))

    def arrays(self) -> dict[str, np.ndarray]:
        return {}


def fit_embedder(embed: str, texts: list[str], seed: int):
    """The embedder `--embed` names, fitted on the sample where it learns anything (tfidf)."""
    return TfidfSvdEmbedder.fit(texts, seed) if embed == TFIDF else EncoderEmbedder(embed)


def load_embedder(spec: dict, arrays: dict[str, np.ndarray], where: str, encoder_path: str | None = None):
    """The embedder an artifact's spec describes; an encoder must still have the fingerprint it was fitted with."""
    kind = spec.get("kind") if isinstance(spec, dict) else None
    if kind == TFIDF:
        return TfidfSvdEmbedder.from_arrays(spec, arrays, where)
    if kind == "encoder":
        path = encoder_path or spec.get("path")
        embedder = EncoderEmbedder(path, "--embed" if encoder_path else f"{where}: encoder")
        if embedder.spec["fingerprint"] != spec.get("fingerprint"):
            raise MixweightError(
                f"{where}: the encoder at {path} is not the one the clustering was fitted with (its files' sha256 "
                f"differs); pass --embed with the original encoder's directory"
            )
        return embedder
    raise MixweightError(f"{where}: unknown embedding kind {kind!r}; expected '{TFIDF}' or 'encoder'")
