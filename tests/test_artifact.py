"""domain_weights.json as input: the forms people write by hand, and the checks against a corpus."""

import json

import pytest

from mixweight.data.manifest import load_manifest
from mixweight.domain.artifact import check_against_manifest, load_domain_weights, resolve_proportions
from mixweight.errors import MixweightError


def test_a_hand_written_map_is_valid_input(synth_corpus, tmp_path):
    manifest = load_manifest(synth_corpus)
    path = tmp_path / "paper.json"
    path.write_text(json.dumps({"weights": {d: 1 / 7 for d in reversed(manifest.domains)}}))
    proportions = resolve_proportions(manifest, str(path))
    assert list(proportions) == manifest.domains  # reordered into the corpus's order
    assert sum(proportions.values()) == pytest.approx(1.0)


def test_a_list_needs_its_domain_names(tmp_path):
    path = tmp_path / "w.json"
    path.write_text(json.dumps({"weights": [0.5, 0.5]}))
    with pytest.raises(MixweightError, match="'domains' .* is required"):
        load_domain_weights(path)


def test_weights_from_another_tokenizer_warn_naming_both(synth_corpus, tmp_path):
    manifest = load_manifest(synth_corpus)
    path = tmp_path / "w.json"
    path.write_text(json.dumps({"domains": manifest.domains, "weights": [1 / 7] * 7,
                                "provenance": {"tokenizer_fingerprint": "byte-v1"}}))
    with pytest.warns(UserWarning, match="'byte-v1'.*'synthetic-v1-256'"):
        check_against_manifest(load_domain_weights(path), manifest, str(path))
