import filecmp
import math

import numpy as np
import pytest

from mixweight.data.manifest import load_manifest
from mixweight.data.streams import read_stream
from mixweight.data.synthetic import DOMAIN_NAMES, VOCAB_SIZE, write_synthetic_corpus
from mixweight.errors import MixweightError


def _same_tree(a, b) -> bool:
    cmp = filecmp.dircmp(a, b)
    if cmp.left_only or cmp.right_only or cmp.diff_files or cmp.funny_files:
        return False
    return all(_same_tree(f"{a}/{d}", f"{b}/{d}") for d in cmp.common_dirs)


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    write_synthetic_corpus(tmp_path / "a", seed=3, tokens_per_domain=4096, seq_len=64)
    write_synthetic_corpus(tmp_path / "b", seed=3, tokens_per_domain=4096, seq_len=64)
    write_synthetic_corpus(tmp_path / "c", seed=4, tokens_per_domain=4096, seq_len=64)
    assert _same_tree(tmp_path / "a", tmp_path / "b")
    for domain in ["noise", "markov1", "arithmetic"]:
        a = read_stream(tmp_path / "a" / "train" / domain)
        c = read_stream(tmp_path / "c" / "train" / domain)
        assert not np.array_equal(a, c)


def test_manifest_describes_the_domains(synth_corpus):
    manifest = load_manifest(synth_corpus)
    assert manifest.domains == DOMAIN_NAMES and len(manifest.domains) >= 6
    assert manifest.vocab_size == VOCAB_SIZE
    assert manifest.irreducible_loss["noise"] == pytest.approx(math.log(VOCAB_SIZE), abs=1e-5)
    assert manifest.irreducible_loss["redundant"] == 0.0
    for domain in manifest.domains:
        blocks = read_stream(manifest.stream_dir(synth_corpus, "train", domain))
        assert blocks.shape == (manifest.splits["train"][domain].blocks, manifest.seq_len)
        assert blocks.min() >= 0 and blocks.max() < VOCAB_SIZE


def test_domains_have_their_character(synth_corpus):
    manifest = load_manifest(synth_corpus)
    redundant = read_stream(manifest.stream_dir(synth_corpus, "train", "redundant"))
    assert len(np.unique(redundant, axis=0)) <= 8 < len(redundant)  # a few sequences repeated
    noise = read_stream(manifest.stream_dir(synth_corpus, "train", "noise"))
    counts = np.bincount(noise.ravel(), minlength=VOCAB_SIZE)
    assert counts.min() > 0 and counts.max() < 3 * counts.mean()  # roughly uniform over the vocabulary
    arithmetic = read_stream(manifest.stream_dir(synth_corpus, "train", "arithmetic"), limit=1)[0]
    for expr in bytes(arithmetic.astype(np.uint8)).decode().split(";")[:-1]:
        lhs, total = expr.split("=")
        a, b = lhs.split("+")
        assert int(a) + int(b) == int(total)
    copy = read_stream(manifest.stream_dir(synth_corpus, "train", "copy"), limit=1)[0]
    assert np.array_equal(copy[:8], copy[9:17])


def test_irreducible_loss_of_unigram_matches_empirical_entropy(synth_corpus):
    manifest = load_manifest(synth_corpus)
    blocks = read_stream(manifest.stream_dir(synth_corpus, "train", "unigram"))
    p = np.bincount(blocks.ravel()) / blocks.size
    p = p[p > 0]
    assert -(p * np.log(p)).sum() == pytest.approx(manifest.irreducible_loss["unigram"], abs=0.02)


def test_rerun_is_a_noop_and_a_different_corpus_is_refused(tmp_path):
    out = tmp_path / "c"
    write_synthetic_corpus(out, seed=0, tokens_per_domain=2048, seq_len=64)
    before = (out / "manifest.json").stat().st_mtime_ns
    write_synthetic_corpus(out, seed=0, tokens_per_domain=2048, seq_len=64)
    assert (out / "manifest.json").stat().st_mtime_ns == before
    with pytest.raises(MixweightError, match="--overwrite"):
        write_synthetic_corpus(out, seed=1, tokens_per_domain=2048, seq_len=64)
    assert load_manifest(out).source["seed"] == 0  # the refused call changed nothing
    write_synthetic_corpus(out, seed=1, tokens_per_domain=2048, seq_len=64, overwrite=True)
    assert load_manifest(out).source["seed"] == 1


def test_bad_sizes_are_refused(tmp_path):
    with pytest.raises(MixweightError, match="seq-len"):
        write_synthetic_corpus(tmp_path / "x", seq_len=8)
    with pytest.raises(MixweightError, match="tokens-per-domain"):
        write_synthetic_corpus(tmp_path / "y", tokens_per_domain=10, seq_len=64)
