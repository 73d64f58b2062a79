"""`data prepare`'s options for domains made by clustering, in one place: flags, pipeline keys, config hash.

:class:`ClusterOptions` is a typed config (one field per option, its help text in the field): the CLI
makes one flag per field (``--domains``, ``--domains-from``, ``--embed``, ``--cluster-sample``,
``--cluster-seed``, ``--cluster-backend``, ``--compare-field``), the pipeline's ``data: prepare:``
takes the same keys, and :func:`config_key` is what of them goes into the corpus's config hash.
Defaults are None ("not given", so an option given without ``--domains`` can be refused); the
values they stand for are the properties (``sample``, ``seed``, ``backend``) and are named in each help.
How the clustering is made: clustering.py; docs/algorithms.md section 9.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Optional

from mixweight.core.config import option
from mixweight.data.embedders import TFIDF, check_encoder_dir, encoder_fingerprint
from mixweight.errors import MixweightError

DOMAINS_DIR = "domains"  # inside the corpus directory
CLUSTERING_FILE = "clustering.json"
ARRAYS_FILE = "arrays.safetensors"
DEFAULT_SAMPLE = 20_000  # documents the embedding and k-means are fitted on
BACKENDS = ("auto", "sklearn", "faiss")
FAISS_FROM = 10**8  # auto: faiss (when installed) from this sample size x K on; below it scikit-learn is quick


@dataclasses.dataclass
class ClusterOptions:
    """`data prepare`'s options for making domains by clustering: one definition for the flags and the pipeline's
    ``data: prepare:`` keys. None means the default the help names (and "not given", so misuse can be refused)."""

    domains: Optional[str] = option(
        None,
        "cluster:K: make K domains by clustering the documents (embedding + k-means) instead of reading "
        "--domain-field (default: read --domain-field)",
    )
    domains_from: Optional[str] = option(
        None,
        "CORPUS: assign the documents to the domains of CORPUS's clustering (its domains/ directory) (default: none)",
    )
    embed: Optional[str] = option(
        None,
        f"{TFIDF} (hashed TF-IDF + truncated SVD, CPU, scikit-learn) | PATH (a local Hugging Face encoder directory: "
        f"mean-pooled hidden states, on the GPU when there is one) (default: {TFIDF})",
    )
    cluster_sample: Optional[int] = option(
        None,
        "documents the embedding and k-means are fitted on, chosen by a seeded hash of their text; every "
        f"document is then assigned in one streaming pass (default: {DEFAULT_SAMPLE})",
    )
    cluster_seed: Optional[int] = option(None, "seed of the sample, the SVD and k-means (default: 0)")
    cluster_backend: Optional[str] = option(
        None,
        "k-means implementation: sklearn (MiniBatchKMeans) | faiss (needs faiss installed) | auto (faiss when "
        f"installed and sample x K >= {FAISS_FROM:.0e}) (default: auto)",
    )
    compare_field: Optional[str] = option(
        None,
        "a record field holding labels the corpus already has: print the adjusted Rand index of the clusters "
        "against it and a contingency table (default: none)",
    )

    FITTING = ("embed", "cluster_sample", "cluster_seed", "cluster_backend")  # options of a new clustering

    def validate(self) -> None:
        if self.domains is not None and self.domains_from is not None:
            raise MixweightError("--domains and --domains-from both given: cluster anew, or reuse a clustering")
        if self.domains is None and self.domains_from is None:
            given = [f for f in (*self.FITTING, "compare_field") if getattr(self, f) is not None]
            if given:
                raise MixweightError(
                    f"--{given[0].replace('_', '-')} applies only with --domains cluster:K or --domains-from CORPUS"
                )
            return
        if self.domains is not None:
            self.k  # noqa: B018 - parses and checks the spec
        if self.domains_from is not None:
            given = [f for f in self.FITTING[1:] if getattr(self, f) is not None]
            if given:
                raise MixweightError(
                    f"--{given[0].replace('_', '-')} with --domains-from: the clustering is {self.domains_from}'s "
                    "as it was fitted; drop the option (only --embed may name where its encoder is now)"
                )
        if self.cluster_sample is not None and self.cluster_sample < 2:
            raise MixweightError(f"--cluster-sample {self.cluster_sample}: must be >= 2 (and >= K)")
        if self.cluster_seed is not None and self.cluster_seed < 0:
            raise MixweightError(f"--cluster-seed {self.cluster_seed}: must be >= 0")
        if self.cluster_backend is not None and self.cluster_backend not in BACKENDS:
            raise MixweightError(f"--cluster-backend {self.cluster_backend!r}: expected one of {', '.join(BACKENDS)}")

    @property
    def active(self) -> bool:
        return self.domains is not None or self.domains_from is not None

    @property
    def k(self) -> int:
        spec = str(self.domains)
        kind, _, count = spec.partition(":")
        if kind != "cluster" or not count.isdigit():
            raise MixweightError(f"--domains {spec}: expected cluster:K, e.g. cluster:16 (K domains by k-means)")
        if int(count) < 2:
            raise MixweightError(f"--domains {spec}: K must be >= 2 (one domain leaves nothing to weight)")
        return int(count)

    @property
    def sample(self) -> int:
        return DEFAULT_SAMPLE if self.cluster_sample is None else self.cluster_sample

    @property
    def seed(self) -> int:
        return self.cluster_seed or 0

    @property
    def backend(self) -> str:
        """The k-means implementation, decided before anything runs (it is part of the config hash)."""
        backend = self.cluster_backend or "auto"
        if backend == "sklearn":
            return backend
        try:
            import faiss  # noqa: F401
        except ImportError:
            if backend == "faiss":
                raise MixweightError("--cluster-backend faiss: not installed (pip install faiss-cpu)") from None
            return "sklearn"
        return "faiss" if backend == "faiss" or self.sample * self.k >= FAISS_FROM else "sklearn"


def external_inputs(options: ClusterOptions) -> dict:
    """What the clustering reads outside the input files (an encoder's files, another corpus's clustering), by
    hash: part of the corpus's config hash and of the pipeline's data-stage key."""
    if options.domains_from is not None:
        return {"domains_from_sha256": artifact_sha256(artifact_dir(options.domains_from))}
    if options.embed not in (None, TFIDF):
        return {"encoder_sha256": encoder_fingerprint(check_encoder_dir(options.embed))}
    return {}


def config_key(options: ClusterOptions) -> dict:
    """Everything that decides the domains: hashed into the corpus's config hash."""
    from mixweight.data.embedders import TfidfSvdEmbedder

    key = {"version": 1, "compare_field": options.compare_field, **external_inputs(options)}
    if options.domains_from is None:
        embed = TfidfSvdEmbedder.default_spec() if options.embed in (None, TFIDF) else "encoder"
        key.update(k=options.k, sample=options.sample, seed=options.seed, backend=options.backend, embed=embed)
    return key


def artifact_dir(corpus) -> Path:
    directory = Path(corpus).expanduser() / DOMAINS_DIR
    if not (directory / CLUSTERING_FILE).is_file():
        raise MixweightError(
            f"--domains-from {corpus}: no {DOMAINS_DIR}/{CLUSTERING_FILE} there; name a local corpus that "
            "`data prepare --domains cluster:K` made"
        )
    return directory


def artifact_sha256(directory: Path) -> str:
    """The clustering's identity: sha256 of clustering.json, which holds the sha256 of the arrays."""
    return hashlib.sha256((directory / CLUSTERING_FILE).read_bytes()).hexdigest()


def cluster_options_of(config) -> ClusterOptions:
    """The ClusterOptions inside a config that carries their fields (`data prepare`'s PrepareConfig)."""
    return ClusterOptions(**{f.name: getattr(config, f.name) for f in dataclasses.fields(ClusterOptions)})
