"""The built-in synthetic corpus: seven domains whose character is known exactly.

Data-mixing methods need something real to find, so the domains differ the way real
ones do: one is learned at once (``redundant``: a few sequences repeated), one can
never be learned (``noise``: uniform tokens, irreducible loss ln V), and five are
learnable with graded difficulty. Each domain states its irreducible loss, the mean
next-token entropy a perfect model would reach on a block (the first token of a block
is never predicted), so reports can show how far each domain is from done.

Same seed and sizes give the same bytes: every random draw comes from a generator
seeded by (seed, domain index, split).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Optional

import numpy as np

from mixweight.core.config import option

VOCAB_SIZE = 256

# ASCII ids, so `bytes(block)` of the arithmetic and copy domains reads as text.
DIGITS = np.arange(ord("0"), ord("9") + 1)
PLUS, EQUALS, SEMICOLON, SPACE, BAR = ord("+"), ord("="), ord(";"), ord(" "), ord("|")


def _entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def _stationary(transition: np.ndarray, iters: int = 4000) -> np.ndarray:
    """A stationary distribution of a finite chain (Cesaro average: converges even for periodic chains)."""
    n = transition.shape[0]
    dist = np.full(n, 1.0 / n)
    avg = np.zeros(n)
    for _ in range(iters):
        dist = dist @ transition
        avg += dist
    avg /= avg.sum()
    return avg


def _sparse_transitions(
    rng: np.random.Generator, n_contexts: int, alphabet: int, fan_out: int, alpha: float
) -> np.ndarray:
    """Each context moves to `fan_out` random symbols with Dirichlet(alpha) probabilities."""
    probs = np.zeros((n_contexts, alphabet))
    for c in range(n_contexts):
        targets = rng.choice(alphabet, size=fan_out, replace=False)
        probs[c, targets] = rng.dirichlet(np.full(fan_out, alpha))
    return probs


@dataclass
class Domain:
    """A synthetic domain: `params` is drawn once per corpus seed, blocks per split."""

    name: str
    description: str

    def setup(self, rng: np.random.Generator, seq_len: int) -> None:  # draw fixed parameters
        pass

    def blocks(self, rng: np.random.Generator, n: int, seq_len: int) -> np.ndarray:
        raise NotImplementedError

    def irreducible_loss(self, seq_len: int) -> float:
        raise NotImplementedError


class Redundant(Domain):
    """A few sequences duplicated many times; distinct first tokens make the rest determined."""

    n_unique = 8

    def setup(self, rng, seq_len):
        self.sequences = rng.integers(0, VOCAB_SIZE, size=(self.n_unique, seq_len))
        self.sequences[:, 0] = rng.choice(VOCAB_SIZE, size=self.n_unique, replace=False)

    def blocks(self, rng, n, seq_len):
        return self.sequences[rng.integers(0, self.n_unique, size=n)]

    def irreducible_loss(self, seq_len):
        return 0.0


class Noise(Domain):
    """Uniform random tokens over the whole vocabulary: nothing to learn, loss ln V at best."""

    def blocks(self, rng, n, seq_len):
        return rng.integers(0, VOCAB_SIZE, size=(n, seq_len))

    def irreducible_loss(self, seq_len):
        return math.log(VOCAB_SIZE)


class Unigram(Domain):
    """Independent tokens with Zipfian frequencies over 64 ids: learned from counts alone (easy)."""

    offset, alphabet, exponent = 64, 64, 1.1

    def setup(self, rng, seq_len):
        ranks = np.arange(1, self.alphabet + 1, dtype=float)
        p = ranks**-self.exponent
        self.probs = p / p.sum()
        self.ids = self.offset + rng.permutation(self.alphabet)

    def blocks(self, rng, n, seq_len):
        return self.ids[rng.choice(self.alphabet, size=(n, seq_len), p=self.probs)]

    def irreducible_loss(self, seq_len):
        return _entropy(self.probs)


class Markov1(Domain):
    """A first-order Markov chain over 64 ids, 4 successors per state (medium)."""

    offset, alphabet, fan_out, alpha = 128, 64, 4, 1.0

    def setup(self, rng, seq_len):
        self.transition = _sparse_transitions(rng, self.alphabet, self.alphabet, self.fan_out, self.alpha)
        self.start = _stationary(self.transition)
        self.cumulative = np.cumsum(self.transition, axis=1)

    def blocks(self, rng, n, seq_len):
        states = np.empty((n, seq_len), dtype=np.int64)
        states[:, 0] = rng.choice(self.alphabet, size=n, p=self.start)
        u = rng.random((n, seq_len))
        for t in range(1, seq_len):
            cdf = self.cumulative[states[:, t - 1]]
            states[:, t] = np.minimum((cdf < u[:, t : t + 1]).sum(axis=1), self.alphabet - 1)
        return self.offset + states

    def irreducible_loss(self, seq_len):
        return float(sum(self.start[s] * _entropy(self.transition[s]) for s in range(self.alphabet)))


class Markov2(Domain):
    """A second-order Markov chain over 16 ids: needs two tokens of context (medium-hard)."""

    offset, alphabet, fan_out, alpha = 192, 16, 3, 0.5

    def setup(self, rng, seq_len):
        a = self.alphabet
        self.next_probs = _sparse_transitions(rng, a * a, a, self.fan_out, self.alpha)  # context (x, y) -> z
        pair_chain = np.zeros((a * a, a * a))  # (x, y) -> (y, z)
        for x in range(a):
            for y in range(a):
                pair_chain[x * a + y, y * a + np.arange(a)] = self.next_probs[x * a + y]
        self.pair_start = _stationary(pair_chain)
        self.cumulative = np.cumsum(self.next_probs, axis=1)

    def blocks(self, rng, n, seq_len):
        a = self.alphabet
        out = np.empty((n, seq_len), dtype=np.int64)
        pairs = rng.choice(a * a, size=n, p=self.pair_start)
        out[:, 0], out[:, 1] = pairs // a, pairs % a
        u = rng.random((n, seq_len))
        for t in range(2, seq_len):
            cdf = self.cumulative[out[:, t - 2] * a + out[:, t - 1]]
            out[:, t] = np.minimum((cdf < u[:, t : t + 1]).sum(axis=1), a - 1)
        return self.offset + out

    def irreducible_loss(self, seq_len):
        a = self.alphabet
        pair = self.pair_start.reshape(a, a)
        first = pair.sum(axis=1)
        # token 1 is predicted from token 0 alone: H(X1 | X0); every later token from two: the entropy rate.
        h_second = _entropy(pair.ravel()) - _entropy(first)
        rate = float(sum(self.pair_start[c] * _entropy(self.next_probs[c]) for c in range(a * a)))
        return (h_second + (seq_len - 2) * rate) / (seq_len - 1)


class Arithmetic(Domain):
    """Additions 'ddd+ddd=dddd;' packed whole into each block: operands random, sums determined (hard)."""

    width = 13  # 3 + 1 + 3 + 1 + 4 + 1 tokens

    def blocks(self, rng, n, seq_len):
        k = seq_len // self.width
        out = np.full((n, seq_len), SPACE, dtype=np.int64)
        a = rng.integers(0, 1000, size=(n, k))
        b = rng.integers(0, 1000, size=(n, k))
        digits = lambda v, w: DIGITS[(v[..., None] // 10 ** np.arange(w - 1, -1, -1)) % 10]  # noqa: E731
        expr = np.concatenate(
            [
                digits(a, 3),
                np.full((n, k, 1), PLUS),
                digits(b, 3),
                np.full((n, k, 1), EQUALS),
                digits(a + b, 4),
                np.full((n, k, 1), SEMICOLON),
            ],
            axis=2,
        )
        out[:, : k * self.width] = expr.reshape(n, k * self.width)
        return out

    def irreducible_loss(self, seq_len):
        k = seq_len // self.width
        random_predicted = 6 * k - 1  # six random digits per sum; the block's first token is not predicted
        return random_predicted * math.log(10) / (seq_len - 1)


class Copy(Domain):
    """Eight random ids, a bar, the same eight again, a bar: the copy is free once learned (hard for small models)."""

    offset, alphabet, span = 208, 32, 8

    def blocks(self, rng, n, seq_len):
        width = 2 * self.span + 2
        k = seq_len // width
        out = np.full((n, seq_len), SPACE, dtype=np.int64)
        segment = self.offset + rng.integers(0, self.alphabet, size=(n, k, self.span))
        bar = np.full((n, k, 1), BAR)
        pattern = np.concatenate([segment, bar, segment, bar], axis=2)
        out[:, : k * width] = pattern.reshape(n, k * width)
        return out

    def irreducible_loss(self, seq_len):
        k = seq_len // (2 * self.span + 2)
        return (self.span * k - 1) * math.log(self.alphabet) / (seq_len - 1)


DOMAINS: list[type[Domain]] = [Redundant, Noise, Unigram, Markov1, Markov2, Arithmetic, Copy]
DOMAIN_NAMES = ["redundant", "noise", "unigram", "markov1", "markov2", "arithmetic", "copy"]
MIN_SEQ_LEN = 2 * Copy.span + 2  # every domain must fit one whole pattern in a block


def build_domains(seed: int, seq_len: int) -> list[Domain]:
    domains = []
    for index, (cls, name) in enumerate(zip(DOMAINS, DOMAIN_NAMES)):
        domain = cls(name=name, description=(cls.__doc__ or "").strip())
        domain.setup(np.random.default_rng([seed, index]), seq_len)
        domains.append(domain)
    return domains


def synth_config_hash(seed: int, tokens_per_domain: int, seq_len: int, val_blocks: int) -> str:
    spec = {
        "kind": "synthetic",
        "version": 1,
        "seed": seed,
        "tokens_per_domain": tokens_per_domain,
        "seq_len": seq_len,
        "val_blocks": val_blocks,
        "vocab_size": VOCAB_SIZE,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class SynthConfig:
    """`mixweight data synth` (and the pipeline's `data: {synthetic: {...}}`, which sets out and overwrite)."""

    COMMAND: ClassVar[str] = "data synth"

    out: Optional[str] = option(
        None,
        "corpus directory to write (new, empty, or a corpus to replace with --overwrite), or a URL "
        "(s3://bucket/corpus, file:///DIR, ...) to upload to, manifest last; required",
        required=True,
    )
    seed: int = option(0, "seed of every random draw")
    tokens_per_domain: int = option(131_072, "training tokens per domain, rounded down to whole blocks")
    seq_len: int = option(128, "tokens per block")
    val_blocks: Optional[int] = option(None, "validation blocks per domain (default: max(8, training blocks / 20))")
    overwrite: bool = option(False, "replace a different mixweight corpus already in --out; never other files")

    def validate(self) -> None:
        check_synth_options(self.tokens_per_domain, self.seq_len, self.val_blocks)


def check_synth_options(tokens_per_domain: int, seq_len: int, val_blocks: int | None) -> None:
    from mixweight.errors import MixweightError

    if seq_len < MIN_SEQ_LEN:
        raise MixweightError(f"--seq-len {seq_len} is too short: the synthetic domains need at least {MIN_SEQ_LEN}")
    if tokens_per_domain // seq_len < 1:
        raise MixweightError(f"--tokens-per-domain {tokens_per_domain} is less than one block of --seq-len {seq_len}")
    if val_blocks is not None and val_blocks < 1:  # every command reports per-domain validation loss
        raise MixweightError(f"--val-blocks {val_blocks}: every domain needs at least one validation block")


def write_synthetic_corpus(
    out_dir,
    seed: int = SynthConfig.seed,
    tokens_per_domain: int = SynthConfig.tokens_per_domain,
    seq_len: int = SynthConfig.seq_len,
    val_blocks: int | None = SynthConfig.val_blocks,
    overwrite: bool = SynthConfig.overwrite,
):
    """Write the synthetic corpus as MDS streams plus manifest.json; returns the Manifest.

    Rerunning with the same arguments on an existing copy is a no-op.
    """

    from mixweight.data.manifest import DomainSplitStats, Manifest, load_manifest
    from mixweight.data.output import check_can_write, is_same_corpus, resolve_output, staged_directory
    from mixweight.data.streams import write_stream

    check_synth_options(tokens_per_domain, seq_len, val_blocks)
    train_blocks = tokens_per_domain // seq_len
    if val_blocks is None:
        val_blocks = max(8, train_blocks // 20)
    out_dir = resolve_output(out_dir)
    config_hash = synth_config_hash(seed, tokens_per_domain, seq_len, val_blocks)
    if is_same_corpus(out_dir, config_hash):
        return load_manifest(out_dir)
    check_can_write(out_dir, overwrite)

    domains = build_domains(seed, seq_len)
    counts = {"train": train_blocks, "val": val_blocks}
    splits: dict[str, dict[str, DomainSplitStats]] = {"train": {}, "val": {}}
    with staged_directory(out_dir) as staging:
        for split_index, split in enumerate(("train", "val")):
            for domain_index, domain in enumerate(domains):
                rng = np.random.default_rng([seed, domain_index, split_index + 1])
                blocks = domain.blocks(rng, counts[split], seq_len)
                rel = f"{split}/{domain.name}"
                write_stream(staging / rel, iter(blocks), domain_index, seq_len, VOCAB_SIZE)
                n = len(blocks)
                splits[split][domain.name] = DomainSplitStats(documents=n, tokens=n * seq_len, blocks=n, path=rel)
        manifest = Manifest(
            domains=[d.name for d in domains],
            seq_len=seq_len,
            vocab_size=VOCAB_SIZE,
            eos_id=None,
            tokenizer={"kind": "synthetic", "fingerprint": f"synthetic-v1-{VOCAB_SIZE}"},
            splits=splits,
            source={
                "kind": "synthetic",
                "seed": seed,
                "tokens_per_domain": tokens_per_domain,
                "val_blocks": val_blocks,
                "descriptions": {d.name: d.description for d in domains},
            },
            config_hash=config_hash,
            irreducible_loss={d.name: round(d.irreducible_loss(seq_len), 6) for d in domains},
        )
        manifest.write(staging)
    return manifest


def default_corpus_dir() -> Path:
    """Where `--data synthetic` keeps the default synthetic corpus (MIXWEIGHT_CACHE overrides)."""
    from mixweight.data.remote import platform_cache

    digest = synth_config_hash(0, 131_072, 128, max(8, 131_072 // 128 // 20))
    return platform_cache() / "corpora" / f"synthetic-{digest}"
