"""`data prepare --domains cluster:K`: a corpus without domain labels, clustered into K domains.

How it runs, and why:
1. Sample: one pass over the input keeps the ``--cluster-sample`` non-empty documents with the lowest
   seeded hash of their text (a heap: memory holds the sample, never the corpus; which documents are
   chosen depends on the texts and the seed, not on file order).
2. Fit: the embedding (embedders.py: hashed TF-IDF + SVD, or a local encoder) and k-means on the
   sample's embeddings: scikit-learn's MiniBatchKMeans, or faiss's k-means when it is installed and
   sample x K is large (``--cluster-backend``); seeded, so the same input and options give the same
   centroids. Clusters are numbered by their size in the sample, largest first, and named and
   described from their top terms and nearest documents (cluster_names.py).
3. Assign: `data prepare`'s one tokenizing pass embeds the documents in batches of EMBED_BATCH and gives
   each its nearest centroid; only a batch is in memory, so the corpus may be larger than memory.
   Documents per second per core of this pass are printed (on stderr).

The clustering is an artifact, ``CORPUS/domains/``: ``clustering.json`` (K, seed, backend, the embedding's
parameters or encoder fingerprint, the sample's size and fingerprint, each cluster's name, terms and
examples) and ``arrays.safetensors`` (centroids, and for TF-IDF the kept hash buckets, their IDF and the
SVD components). JSON and safetensors only: loading one runs no code. The manifest records its sha256
and the corpus's config hash covers it. ``--domains-from CORPUS`` copies it into a new corpus and assigns
that corpus's documents to the same domains, so weights computed on one corpus apply to the next.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from mixweight.data import cluster_names
from mixweight.data.cluster_options import (
    ARRAYS_FILE,
    CLUSTERING_FILE,
    DOMAINS_DIR,
    ClusterOptions,
    artifact_dir,
    artifact_sha256,
)
from mixweight.data.embedders import EMBED_BATCH, TFIDF, needs_sklearn
from mixweight.data.names import name_problem
from mixweight.errors import MixweightError

FORMAT = "mixweight-clustering/1"
MAX_LABELS = 1000  # distinct --compare-field values: more is an identifier, not a domain label


# --- fitting -----------------------------------------------------------------------------------
def sample_score(text: str, seed: int) -> bytes:
    return hashlib.blake2b(
        text.encode("utf-8", errors="surrogatepass"), digest_size=8, key=seed.to_bytes(8, "big")
    ).digest()


def draw_sample(texts: Iterable[str], size: int, seed: int) -> tuple[list[str], dict]:
    """The `size` non-empty texts of lowest seeded hash (truncated for embedding), in hash order, and a record."""
    from mixweight.data.embedders import EMBED_CHARS

    heap: list = []  # max-heap by score: (negated score, text)
    seen = 0
    for text in texts:
        if not text.strip():
            continue
        seen += 1
        entry = (-int.from_bytes(sample_score(text, seed), "big"), text[:EMBED_CHARS])
        if len(heap) < size:
            heapq.heappush(heap, entry)
        elif entry > heap[0]:
            heapq.heapreplace(heap, entry)
    chosen = sorted(heap, reverse=True)  # lowest score first
    digest = hashlib.sha256(b"".join((-s).to_bytes(8, "big") for s, _ in chosen)).hexdigest()
    record = {"requested": size, "documents": len(chosen), "seen": seen, "fingerprint": digest[:16]}
    return [t for _, t in chosen], record


def kmeans_centroids(points: np.ndarray, k: int, seed: int, backend: str) -> np.ndarray:
    if backend == "faiss":
        import faiss
        from sklearn.cluster import kmeans_plusplus

        # faiss starts from random points (on the test fixture 5 random starts all merged two kinds of text):
        # start it from scikit-learn's k-means++ seeds instead, then faiss's Lloyd iterations
        points = np.ascontiguousarray(points, dtype=np.float32)
        start, _ = kmeans_plusplus(points, k, random_state=seed)
        km = faiss.Kmeans(points.shape[1], k, niter=25, seed=seed, max_points_per_centroid=len(points), verbose=False)
        km.train(points, init_centroids=np.ascontiguousarray(start, dtype=np.float32))
        return np.asarray(km.centroids, dtype=np.float32)
    from sklearn.cluster import MiniBatchKMeans

    km = MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=3, batch_size=4096, max_iter=100)
    return km.fit(points).cluster_centers_.astype(np.float32)


def nearest(points: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    from sklearn.metrics import pairwise_distances_argmin

    return pairwise_distances_argmin(points, centroids) if len(points) else np.zeros(0, dtype=np.int64)


class Clustering:
    """An embedder, K centroids and the clusters' names and descriptions: fitted, or loaded from an artifact."""

    def __init__(self, record: dict, embedder, centroids: np.ndarray):
        self.record, self.embedder, self.centroids = record, embedder, centroids
        self.names = [c["name"] for c in record["clusters"]]
        self.notes: list[str] = []  # how long fitting took: printed once the corpus is written

    def assign(self, texts: list[str]) -> np.ndarray:
        return nearest(self.embedder.embed(texts), self.centroids)

    @classmethod
    def fit(cls, texts: list[str], sample: dict, options: ClusterOptions) -> "Clustering":
        from mixweight.data.embedders import fit_embedder

        k, seed, backend = options.k, options.seed, options.backend
        if len(texts) < k:
            raise MixweightError(
                f"--domains cluster:{k}: only {len(texts)} non-empty document(s) to cluster "
                f"({sample['seen']} in the input, --cluster-sample {sample['requested']}); K must be at most the "
                "number of documents, and useful clusters hold many: lower K or add documents"
            )
        embedder = fit_embedder(options.embed or TFIDF, texts, seed)
        points = embedder.embed(texts)
        centroids = kmeans_centroids(points, k, seed, backend)
        labels = nearest(points, centroids)
        sizes = np.bincount(labels, minlength=k)
        order = sorted(range(k), key=lambda c: (-sizes[c], c))  # largest first: cluster 0 is the biggest
        centroids = centroids[order]
        labels = np.argsort(order)[labels]
        terms = cluster_names.top_terms(texts, labels, k)
        examples = cluster_names.nearest_examples(points, labels, centroids, texts)
        clusters = [
            {
                "name": name,
                "description": cluster_names.describe(terms[c], examples[c]),
                "top_terms": terms[c],
                "examples": examples[c],
                "sample_documents": int(sizes[order[c]]),
            }
            for c, name in enumerate(cluster_names.cluster_names(terms))
        ]
        record = {
            "format": FORMAT,
            "k": k,
            "seed": seed,
            "backend": backend,
            "embedding": embedder.spec,
            "sample": {**sample, "selection": "the non-empty documents of lowest blake2b(text, key=seed)"},
            "clusters": clusters,
        }
        return cls(record, embedder, centroids)

    # --- the artifact ----------------------------------------------------------------------
    def write(self, directory: Path) -> str:
        """Write clustering.json and arrays.safetensors into `directory`; returns the artifact's sha256."""
        from safetensors.numpy import save

        directory.mkdir(parents=True, exist_ok=True)
        arrays = {"centroids": self.centroids, **self.embedder.arrays()}
        data = save({k: np.ascontiguousarray(v) for k, v in arrays.items()})
        (directory / ARRAYS_FILE).write_bytes(data)
        digest = hashlib.sha256(data).hexdigest()
        self.record["arrays"] = {"file": ARRAYS_FILE, "sha256": digest, "names": sorted(arrays)}
        text = json.dumps(self.record, indent=2, ensure_ascii=False) + "\n"
        (directory / CLUSTERING_FILE).write_text(text, encoding="utf-8")
        return artifact_sha256(directory)

    @classmethod
    def load(cls, directory: Path, encoder_path: str | None = None) -> "Clustering":
        """Read and check an artifact; every problem is one line naming the file."""
        from safetensors.numpy import load_file

        from mixweight.data.embedders import load_embedder

        where = str(directory / CLUSTERING_FILE)
        try:
            record = json.loads((directory / CLUSTERING_FILE).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise MixweightError(f"{where}: not readable JSON ({exc}); re-create the clustering") from None
        if not isinstance(record, dict) or record.get("format") != FORMAT:
            raise MixweightError(f"{where}: not a mixweight clustering (format {FORMAT} expected)")
        clusters, k = record.get("clusters"), record.get("k")
        names = (
            [c.get("name") for c in clusters]
            if isinstance(clusters, list) and all(isinstance(c, dict) for c in clusters)
            else None
        )
        if not isinstance(k, int) or k < 2 or names is None or len(names) != k or len(set(names)) != k:
            raise MixweightError(f"{where}: 'k' and 'clusters' (K entries with distinct names) do not agree")
        bad = next((n for n in names if name_problem(n)), None)
        if bad is not None:
            raise MixweightError(f"{where}: cluster name {bad!r} {name_problem(bad)}")
        arrays_file = directory / ARRAYS_FILE
        recorded = (record.get("arrays") or {}).get("sha256")
        if not arrays_file.is_file() or hashlib.sha256(arrays_file.read_bytes()).hexdigest() != recorded:
            raise MixweightError(f"{arrays_file}: missing or not the file {where} records (sha256); re-create it")
        try:
            arrays = load_file(str(arrays_file))
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error type for a damaged file
            raise MixweightError(f"{arrays_file}: not a readable safetensors file ({exc})") from None
        centroids = arrays.get("centroids")
        if centroids is None or centroids.ndim != 2 or centroids.shape[0] != k or not np.isfinite(centroids).all():
            raise MixweightError(f"{arrays_file}: 'centroids' must be K={k} finite rows")
        embedder = load_embedder(record.get("embedding"), arrays, where, encoder_path)
        return cls(record, embedder, centroids.astype(np.float32))


def build_clustering(
    options: ClusterOptions, staging: Path, texts: Callable[[], Iterator[str]], progress: bool
) -> "Clustering":
    """Fit a new clustering (or load --domains-from's) and write its artifact into the corpus being staged."""
    needs_sklearn("--domains" if options.domains_from is None else "--domains-from")
    target = staging / DOMAINS_DIR
    if options.domains_from is not None:
        source = artifact_dir(options.domains_from)
        clustering = Clustering.load(source, options.embed)
        target.mkdir(parents=True)
        for name in (CLUSTERING_FILE, ARRAYS_FILE):
            shutil.copyfile(source / name, target / name)
        clustering.record["from"] = str(Path(options.domains_from).expanduser().resolve())
        return clustering
    from tqdm.auto import tqdm

    began = time.perf_counter()
    sample, record = draw_sample(
        tqdm(texts(), desc="cluster sample", unit="doc", disable=not progress), options.sample, options.seed
    )
    drawn = time.perf_counter()
    clustering = Clustering.fit(sample, record, options)
    clustering.write(target)
    clustering.notes.append(
        f"sampled {len(sample)} of {record['seen']} documents in {drawn - began:.1f}s; fitted "
        f"{clustering.record['embedding']['kind']} + k-means ({options.backend}, K={options.k}) in "
        f"{time.perf_counter() - drawn:.1f}s"
    )
    return clustering


class Assignment:
    """Every document's domain, in one streaming pass: batches of texts embedded and given their nearest centroid."""

    def __init__(self, clustering: Clustering, compare_field: str | None):
        self.clustering, self.compare_field = clustering, compare_field
        self.documents = np.zeros(len(clustering.names), dtype=np.int64)
        self.empty = 0
        self.table: dict[str, dict[str, int]] = {}
        self.wall = self.cpu = 0.0

    def stream(self, labelled: Iterable[tuple[object, str]]) -> Iterator[tuple[str, str]]:
        """(cluster name, text) for every non-empty text of (label, text); empty texts are counted, not assigned."""
        batch: list[tuple[object, str]] = []
        for label, text in labelled:
            if not text.strip():
                self.empty += 1
                continue
            batch.append((label, text))
            if len(batch) >= EMBED_BATCH:
                yield from self._assign(batch)
                batch = []
        if batch:
            yield from self._assign(batch)
        if self.documents.sum():
            rate = self.documents.sum() / max(self.wall, 1e-9)
            cores = self.cpu / max(self.wall, 1e-9)
            self.clustering.notes.append(
                f"assigned {self.documents.sum()} documents to {len(self.documents)} clusters in {self.wall:.1f}s: "
                f"{rate:.0f} documents/s on {cores:.2f} cores on average, {rate / max(cores, 1e-9):.0f} documents/s "
                "per core"
            )

    def _assign(self, batch: list[tuple[object, str]]) -> Iterator[tuple[str, str]]:
        wall, cpu = time.perf_counter(), time.process_time()
        clusters = self.clustering.assign([text for _, text in batch])
        self.wall += time.perf_counter() - wall
        self.cpu += time.process_time() - cpu
        names = self.clustering.names
        for (label, text), cluster in zip(batch, clusters):
            self.documents[cluster] += 1
            if self.compare_field is not None:
                row = self.table.setdefault(str(label), {})
                if len(self.table) > MAX_LABELS:
                    raise MixweightError(
                        f"--compare-field {self.compare_field}: more than {MAX_LABELS} distinct values; it should "
                        "name a field of domain labels (a handful of values), not an identifier"
                    )
                row[names[cluster]] = row.get(names[cluster], 0) + 1
            yield names[cluster], text

    def print_notes(self) -> None:
        """Fitting time and documents/s per core, on stderr: after the corpus is written (a refused command prints
        its one error line alone), and not in the manifest (timings would break byte-identical corpora)."""
        for line in self.clustering.notes:
            print(f"mixweight data prepare: {line}", file=sys.stderr, flush=True)

    def manifest_block(self, artifact_sha: str) -> dict:
        """The manifest's `clustering`: the artifact by hash, and every cluster's name, description, size, share."""
        record, total = self.clustering.record, int(self.documents.sum())
        embedding = record["embedding"]
        block = {
            "path": DOMAINS_DIR,
            "sha256": artifact_sha,
            "k": record["k"],
            "seed": record["seed"],
            "embed": TFIDF if embedding["kind"] == TFIDF else f"encoder {embedding['path']}",
            "from": record.get("from"),
            "clusters": {
                c["name"]: {
                    "description": c["description"],
                    "documents": int(n),
                    "share": round(int(n) / total, 6) if total else 0.0,
                }
                for c, n in zip(record["clusters"], self.documents)
            },
            "empty_documents": self.empty,
        }
        if self.compare_field is not None:
            table = {label: dict(sorted(row.items())) for label, row in sorted(self.table.items())}
            block["compare"] = {
                "field": self.compare_field,
                "ari": round(cluster_names.adjusted_rand_index(table), 6),
                "table": table,
            }
        return block
