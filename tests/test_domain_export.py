"""Exporting domain weights for other trainers, and the weight plots."""

import pytest
import yaml

from mixweight.core.artifact import DomainWeights
from mixweight.domain.export import PLACEHOLDER_CORPUS, export_weights
from mixweight.domain.plots import plot_trajectory, plot_weights_vs_natural
from mixweight.errors import MixweightError


def _weights(provenance=None) -> DomainWeights:
    return DomainWeights(
        domains=["web", "code"],
        weights=[0.75, 0.25],
        method={"name": "doremi"},
        trajectory=[
            {"step": 10, "weights": [0.6, 0.4], "signal": [0.1, 0.0]},
            {"step": 20, "weights": {"web": 0.8, "code": 0.2}, "signal": [0.2, 0.1]},
        ],
        provenance=provenance or {},
    )


def test_streams_yaml_names_each_domain_stream_and_proportion():
    text = export_weights(
        _weights({"corpus": "/data/c", "stream_paths": {"web": "train/web", "code": "train/code"}}), "streams-yaml"
    )
    assert yaml.safe_load(text) == {
        "streams": {
            "web": {"local": "/data/c/train/web", "proportion": 0.75},
            "code": {"local": "/data/c/train/code", "proportion": 0.25},
        }
    }


def test_streams_yaml_uses_a_marked_placeholder_without_provenance():
    text = export_weights(_weights(), "streams-yaml")
    assert text.startswith("# fill in")
    assert yaml.safe_load(text)["streams"]["code"]["local"] == f"{PLACEHOLDER_CORPUS}/train/code"


def test_megatron_and_json_formats():
    assert export_weights(_weights({"corpus": "/c"}), "megatron") == "0.75 /c/train/web 0.25 /c/train/code\n"
    assert yaml.safe_load(export_weights(_weights(), "json")) == {"web": 0.75, "code": 0.25}


def test_unknown_format_lists_the_valid_ones():
    with pytest.raises(MixweightError, match="unknown format 'csv'; valid formats: streams-yaml, megatron, json"):
        export_weights(_weights(), "csv")


def test_plots_are_written(tmp_path):
    a = plot_trajectory(_weights(), tmp_path / "t.png")
    b = plot_weights_vs_natural(_weights(), {"web": 0.5, "code": 0.5}, tmp_path / "b.png")
    for path in (a, b):
        assert path.stat().st_size > 1000 and path.read_bytes()[:4] == b"\x89PNG"


def test_held_out_targets_are_left_out_of_the_trainer_formats():
    weights = DomainWeights(
        domains=["web", "copy", "code"], weights=[0.75, 0.0, 0.25], targets=["copy"], provenance={"corpus": "/c"}
    )
    text = export_weights(weights, "streams-yaml")
    assert "# not sampled (weight 0), so left out: copy (held-out target)" in text
    assert list(yaml.safe_load(text)["streams"]) == ["web", "code"]
    assert export_weights(weights, "megatron") == "0.75 /c/train/web 0.25 /c/train/code\n"
    assert yaml.safe_load(export_weights(weights, "json")) == {"web": 0.75, "copy": 0.0, "code": 0.25}
