"""A damaged corpus is refused before training, with the file and what to do."""

import json
import shutil

import pytest

from mixweight.data.manifest import load_manifest
from mixweight.data.synthetic import write_synthetic_corpus
from mixweight.errors import MixweightError


@pytest.fixture
def corpus(tmp_path):
    out = tmp_path / "corpus"
    write_synthetic_corpus(out, tokens_per_domain=2048, seq_len=64)
    return out


def test_a_truncated_shard_is_named(corpus):
    shard = corpus / "train" / "markov1" / "shard.00000.mds"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(
        MixweightError, match=r"domain 'markov1' \(train\).*shard.00000.mds has .* truncated or corrupted"
    ):
        load_manifest(corpus)


def test_a_missing_shard_is_named(corpus):
    (corpus / "val" / "copy" / "shard.00000.mds").unlink()
    with pytest.raises(MixweightError, match=r"domain 'copy' \(val\).*missing"):
        load_manifest(corpus)


def test_a_missing_domain_directory_is_named(corpus):
    shutil.rmtree(corpus / "train" / "noise")
    with pytest.raises(MixweightError, match=r"domain 'noise' \(train\) should be an MDS stream"):
        load_manifest(corpus)


def test_an_empty_domain_is_named(corpus, tmp_path):
    from mixweight.data.streams import write_stream

    shutil.rmtree(corpus / "train" / "unigram")
    write_stream(corpus / "train" / "unigram", iter([]), 2, 64, 256)
    raw = json.loads((corpus / "manifest.json").read_text())
    raw["splits"]["train"]["unigram"].update(blocks=0, tokens=0, documents=0)
    (corpus / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(MixweightError, match=r"domain 'unigram' \(train\) is empty"):
        load_manifest(corpus)


def test_a_manifest_that_disagrees_with_its_streams_is_refused(corpus):
    raw = json.loads((corpus / "manifest.json").read_text())
    raw["splits"]["train"]["copy"]["blocks"] += 5
    (corpus / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(MixweightError, match="the manifest says"):
        load_manifest(corpus)


def test_a_broken_manifest_is_named(corpus):
    (corpus / "manifest.json").write_text("{not json")
    with pytest.raises(MixweightError, match="manifest.json: not valid JSON"):
        load_manifest(corpus)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda raw: raw.update(source=[1, []]), "'source' must be a JSON object"),
        (lambda raw: raw.update(irreducible_loss={"noise": "high"}), "'irreducible_loss' values must be numbers"),
        (lambda raw: raw.update(eos_id=10**9), "'eos_id' must be null or a token id"),
        (lambda raw: raw.update(seq_len="64"), "'seq_len' must be an integer >= 2"),
        (lambda raw: raw["splits"]["val"]["copy"].update(path="../../elsewhere"), "expected a path inside the corpus"),
        (lambda raw: raw["splits"]["train"]["copy"].update(blocks=-1), "counts >= 0"),
        (lambda raw: raw.update(domains="copy"), "'domains' must be a non-empty list"),
    ],
)
def test_a_malformed_manifest_is_one_line(corpus, edit, message):
    raw = json.loads((corpus / "manifest.json").read_text())
    edit(raw)
    (corpus / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(MixweightError, match=message):
        load_manifest(corpus)
