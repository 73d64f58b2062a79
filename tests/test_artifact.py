"""domain_weights.json as input: the forms people write by hand, and the checks against a corpus."""

import json

import pytest

from mixweight.core.artifact import check_against_manifest, load_domain_weights, resolve_proportions
from mixweight.data.manifest import load_manifest
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
    path.write_text(
        json.dumps(
            {"domains": manifest.domains, "weights": [1 / 7] * 7, "provenance": {"tokenizer_fingerprint": "byte-v1"}}
        )
    )
    with pytest.warns(UserWarning, match="'byte-v1'.*'synthetic-v1-256'"):
        check_against_manifest(load_domain_weights(path), manifest, str(path))


# --- held-out targets and omitted domains (issue 10.2) ------------------------------------
def _targets_artifact(manifest, path, target="copy"):
    from mixweight.core.artifact import DomainWeights, corpus_weights

    trained = [d for d in manifest.domains if d != target]
    weights = corpus_weights(manifest.domains, {d: 1 / len(trained) for d in trained})
    return DomainWeights(domains=list(manifest.domains), weights=weights, targets=[target]).write(path)


def test_an_artifact_with_a_held_out_target_trains_and_never_samples_it(synth_corpus, tmp_path):
    from mixweight.core.distributed import World
    from mixweight.sampling.mixture import DomainMixture
    from mixweight.sampling.schedule import resolve_schedule

    manifest = load_manifest(synth_corpus)
    path = _targets_artifact(manifest, tmp_path / "doge.json")
    saved = json.loads(path.read_text())
    assert saved["domains"] == manifest.domains and saved["targets"] == ["copy"]
    assert saved["weights"][manifest.domains.index("copy")] == 0
    (phase,) = resolve_schedule(manifest, str(path))
    assert phase.weights["copy"] == 0 and sum(phase.weights.values()) == pytest.approx(1.0)
    mixture = DomainMixture(synth_corpus, manifest, [phase], 256, 32, 0, World())
    try:
        seen = {int(d) for step in range(8) for d in mixture.next_batch(step)["domain"]}
    finally:
        mixture.close()
    assert manifest.domain_id("copy") not in seen and len(seen) == len(manifest.domains) - 1


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda raw: raw["weights"].__setitem__(0, 0.1), "target 'copy' has weight 0.1"),
        (lambda raw: raw.__setitem__("targets", ["nope"]), "target 'nope' is not one of the 'domains'"),
        (lambda raw: raw.__setitem__("targets", "copy"), "'targets' must be a list of domain names"),
    ],
)
def test_targets_must_be_domains_at_weight_zero(tmp_path, edit, message):
    path = tmp_path / "w.json"
    raw = {"domains": ["copy", "a", "b"], "weights": [0.0, 0.5, 0.5], "targets": ["copy"]}
    edit(raw)
    path.write_text(json.dumps(raw))
    with pytest.raises(MixweightError, match=message):
        load_domain_weights(path)


def test_the_writer_refuses_a_target_with_weight(tmp_path):
    from mixweight.core.artifact import DomainWeights

    bad = DomainWeights(domains=["copy", "a"], weights=[0.5, 0.5], targets=["copy"])
    with pytest.raises(MixweightError, match="target 'copy' has weight 0.5"):
        bad.write(tmp_path / "w.json")
    assert not (tmp_path / "w.json").exists()


def test_omitted_domains_are_an_error_unless_the_file_says_missing_zero(synth_corpus, tmp_path):
    manifest = load_manifest(synth_corpus)
    path = tmp_path / "w.json"
    path.write_text(json.dumps({"weights": {"redundant": 0.5, "noise": 0.5}}))
    with pytest.raises(MixweightError, match='missing for corpus domains.*add "missing": "zero"'):
        resolve_proportions(manifest, str(path))
    path.write_text(json.dumps({"weights": {"redundant": 0.5, "noise": 0.5}, "missing": "zero"}))
    with pytest.warns(UserWarning, match="get weight 0 and are not sampled"):
        proportions = resolve_proportions(manifest, str(path))
    assert list(proportions) == manifest.domains
    assert proportions["redundant"] == 0.5 and proportions["copy"] == 0.0
    path.write_text(json.dumps({"weights": {"redundant": 0.5, "noise": 0.5}, "missing": "uniform"}))
    with pytest.raises(MixweightError, match="'missing' must be \"zero\""):
        resolve_proportions(manifest, str(path))
