"""Hostile weights files and schedules: every case is one `mixweight: error:` line naming the file and the key."""

from __future__ import annotations

import pytest

from mixweight.core.artifact import load_domain_weights
from mixweight.data.manifest import load_manifest
from mixweight.errors import MixweightError
from mixweight.sampling.schedule import resolve_schedule

BIG_INT = "1" + "0" * 400  # JSON allows it; Python would make a 400-digit int that float() cannot take
HUGE_INT = "1" * 5000  # beyond Python's int-from-string digit limit

WEIGHTS_CASES = [
    ('{"domains": ["a", "b"], "weights": [%s, 0]}' % BIG_INT, "weight of 'a' is inf; weights must be finite"),
    ('{"domains": ["a", "b"], "weights": [%s, 0]}' % HUGE_INT, "weight of 'a' is inf; weights must be finite"),
    ('{"domains": ["a", "b"], "weights": [1e400, 0]}', "weight of 'a' is inf"),
    ('{"domains": ["a", "b"], "weights": [NaN, 1]}', "weight of 'a' is nan"),
    ('{"domains": ["a", "b"], "weights": [Infinity, 1]}', "weight of 'a' is inf"),
    ('{"domains": ["a", "b"], "weights": [-0.5, 1.5]}', "weight of 'a' is -0.5"),
    ('{"domains": [1, 2], "weights": [0.5, 0.5]}', "'domains' must be a list of domain names \\(strings\\)"),
    ('{"domains": ["a", 2], "weights": {"a": 1}}', "'domains' must be a list of domain names"),
    ('{"domains": "ab", "weights": [0.5, 0.5]}', "'domains' must be a list of domain names"),
    ('{"weights": {"a": 0.5, "b": 0.5}, "method": ["doremi"]}', "'method' must be a mapping"),
    ('{"weights": {"a": 0.5, "b": 0.5}, "method": "doremi"}', "'method' must be a mapping"),
    ('{"weights": {"a": 0.5, "b": 0.5}, "provenance": 7}', "'provenance' must be a mapping"),
    ('{"weights": {"a": 0.5, "b": 0.5}, "trajectory": {"step": 1}}', "'trajectory' must be a list of JSON objects"),
    ('{"weights": {"a": 0.5, "b": 0.5}, "replay": []}', "'replay' must be a mapping"),
    ('{"weights": {"a": 0.5, "b": 0.5}, "last_weights": "x"}', "'last_weights' must be 2 numbers"),
    ('{"weights": {"a": 0.5, "b": 0.5}, "missing": 0}', "'missing' must be \"zero\""),
    ('{"weights": {"a": 0.5, "a": 0.5}}', "key 'a' appears twice"),
    ('{"weights": {"a": 1}, "weights": {"b": 1}}', "key 'weights' appears twice"),
    ('{"weights": {"a": "0.5", "b": 0.5}}', "weight of 'a' is '0.5', expected a number"),
    ('{"weights": {"a\\nb": -1, "b": 2}}', "weight of 'a\\\\nb' is -1.0"),
    ('{"weights": 0.5}', "'weights' must be a list or a \\{domain: weight\\} map"),
    ("[[[[[[[[[[" * 20000, "nested too deeply|not valid JSON"),
    ("[1, 2]", "expected a JSON object with 'weights'"),
    ('"weights"', "expected a JSON object with 'weights'"),
    ('{"weights": [0.5, 0.5', "not valid JSON"),
]


@pytest.mark.parametrize("text, message", WEIGHTS_CASES)
def test_hostile_weights_files_are_one_line_errors_naming_the_file(tmp_path, text, message):
    path = tmp_path / "hostile.json"
    path.write_text(text)
    with pytest.raises(MixweightError, match=message) as caught:
        load_domain_weights(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_random_bytes_are_not_a_weights_file(tmp_path):
    path = tmp_path / "bytes.json"
    path.write_bytes(b"\x82<\xfd\xe6\xf1\xc2k0")
    with pytest.raises(MixweightError, match="bytes.json: not UTF-8 text"):
        load_domain_weights(path)


SCHEDULE_CASES = [
    (
        "s.yaml",
        "- {start_step: 0, weights: uniform}\n- {start_step: 0, weights: uniform, weights: natural}\n",
        "appears twice",
    ),
    ("s.yaml", "- {start_step: %s, weights: uniform}\n" % HUGE_INT, "schedule file .*s.yaml"),
    ("s.yaml", "- {start_step: 0, weights: {1: 0.5, 2: 0.5}}\n", "'domains' must be a list of domain names"),
    ("s.yaml", "- {start_step: 0, weights: !!python/object/apply:os.system [echo]}\n", "not valid YAML"),
    ("s.yaml", '- {start_step: 0, weights: uniform, "a\\nb": 1}\n', "unknown key 'a\\\\nb'"),
    ("s.yaml", "- {start_step: 1.0e+400, weights: uniform}\n", "start_step must be an integer >= 0"),
    ("s.yaml", "[" * 20000, "schedule file .*s.yaml"),
    ("s.json", '[{"start_step": 0, "start_step": 5, "weights": "uniform"}]', "key 'start_step' appears twice"),
    ("s.json", '[{"start_step": 0, "weights": {"redundant": %s}}]' % BIG_INT, "weight of 'redundant' is inf"),
    ("s.json", '[{"start_step": 0, "weights": "bad\\nname.json"}]', "weights file '.*bad\\\\nname.json' not found"),
]


@pytest.mark.parametrize("name, text, message", SCHEDULE_CASES)
def test_hostile_schedules_are_one_line_errors(synth_corpus, tmp_path, name, text, message):
    manifest = load_manifest(synth_corpus)
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(MixweightError, match=message) as caught:
        resolve_schedule(manifest, str(path))
    assert "\n" not in str(caught.value)


def test_a_domain_weights_value_the_os_refuses_is_one_line(synth_corpus):
    manifest = load_manifest(synth_corpus)
    with pytest.raises(MixweightError, match="expected natural, uniform"):
        resolve_schedule(manifest, "w" * 300 + ".json")


# --- regmix artifacts: `weights verify` refits the swarm table, so every field it reads is checked -------------
def regmix_artifact() -> dict:
    """A small regmix artifact whose weights are its own refit (so it verifies): 3 domains, 8 runs on an exact law."""
    import numpy as np

    from mixweight.core.artifact import DomainWeights
    from mixweight.domain.verify import replay_regmix_weights as replay_weights

    domains = ["a", "b", "c"]
    rng = np.random.default_rng(0)
    mixtures = rng.dirichlet(np.ones(3), size=8)
    swarm = [
        {
            "run": i,
            "weights": dict(zip(domains, row.tolist())),
            "losses": {d: float(2.0 + np.exp(0.5 - 1.5 * row[j])) for j, d in enumerate(domains)},
            "target_loss": 0.0,
        }
        for i, row in enumerate(mixtures)
    ]
    method = {
        "name": "regmix",
        "prior_weights": {"a": 0.5, "b": 0.3, "c": 0.2},
        "kl_reg": 0.0,
        "token_budget": 1000,
        "max_epochs": 2.0,
        "fit": {"regressor": "loglinear", "target_domains": domains},
        "swarm": swarm,
    }
    provenance = {"seed": 0, "domain_token_counts": {"a": 400, "b": 300, "c": 600}}
    draft = DomainWeights(domains=domains, weights=[1 / 3] * 3, method=method, provenance=provenance)
    weights = replay_weights(draft)
    return {"domains": domains, "weights": weights, "method": method, "provenance": provenance}


def _edited(edit) -> dict:
    import copy

    artifact = copy.deepcopy(REGMIX)
    edit(artifact)
    return artifact


REGMIX = regmix_artifact()
REGMIX_CASES = [
    ("empty swarm", lambda a: a["method"].update(swarm=[]), r"method.swarm must be a list of at least 4 runs.*got 0"),
    ("no budget", lambda a: a["method"].pop("token_budget"), r"method.max_epochs is set but method.token_budget"),
    (
        "no token counts",
        lambda a: a["provenance"].pop("domain_token_counts"),
        r"method.max_epochs needs provenance.domain_token_counts",
    ),
    (
        "a token count short",
        lambda a: a["provenance"]["domain_token_counts"].pop("b"),
        r"provenance.domain_token_counts for every training domain",
    ),
    (
        "NaN loss",
        lambda a: a["method"]["swarm"][2]["losses"].update(b=float("nan")),
        r"method.swarm\[2\].losses.b is nan, expected a finite number",
    ),
    ("a loss as text", lambda a: a["method"]["swarm"][0]["losses"].update(a="low"), r"swarm\[0\].losses.a is 'low'"),
    ("a run lacks a target", lambda a: a["method"]["swarm"][1]["losses"].pop("c"), r"swarm\[1\].losses lacks \['c'\]"),
    ("a run is a number", lambda a: a["method"]["swarm"].__setitem__(3, 7), r"method.swarm\[3\] must be a mapping"),
    ("no fit", lambda a: a["method"].pop("fit"), r"method.fit must be a mapping"),
    ("unknown regressor", lambda a: a["method"]["fit"].update(regressor="svm"), r"method.fit.regressor is 'svm'"),
    ("no targets", lambda a: a["method"]["fit"].update(target_domains=[]), r"method.fit.target_domains must be"),
    ("no prior", lambda a: a["method"].pop("prior_weights"), r"method.prior_weights must be a non-empty"),
    ("prior of another corpus", lambda a: a["method"]["prior_weights"].update(z=0.1), r"names \['z'\], not domains"),
    ("negative kl", lambda a: a["method"].update(kl_reg=-1), r"method.kl_reg is -1.0, expected >= 0"),
    ("budget text", lambda a: a["method"].update(token_budget="big"), r"method.token_budget is 'big'"),
    ("max_epochs zero", lambda a: a["method"].update(max_epochs=0), r"method.max_epochs is 0, expected a positive"),
    ("caps below 1", lambda a: a["method"].update(max_epochs=0.1), r"allows only 0.13 of the mixture"),
    ("seed text", lambda a: a["provenance"].update(seed="zero"), r"provenance.seed is 'zero', expected an integer"),
    ("edited weights", lambda a: a.update(weights=[0.2, 0.3, 0.5]), r"does not replay: refitting its 8 swarm runs"),
    ("unknown fit loss", lambda a: a["method"]["fit"].update(loss="l1"), r"method.fit.loss is 'l1', expected one of"),
    (
        "zero huber delta",
        lambda a: a["method"]["fit"].update(loss="huber", huber_delta=0),
        r"method.fit.huber_delta is 0, expected a positive",
    ),
]


def test_a_regmix_artifact_as_written_verifies(tmp_path):
    import json

    from mixweight.domain.methods import verify_file

    path = tmp_path / "w.json"
    path.write_text(json.dumps(REGMIX))
    assert "refitted 8 regmix swarm runs (loglinear); the recorded weights match" in verify_file(path)


@pytest.mark.parametrize("name, edit, message", REGMIX_CASES, ids=[c[0] for c in REGMIX_CASES])
def test_an_edited_regmix_artifact_is_one_verify_line_naming_the_file_and_field(tmp_path, name, edit, message):
    import json

    from mixweight.domain.methods import verify_file

    path = tmp_path / "edited.json"
    path.write_text(json.dumps(_edited(edit)))
    with pytest.raises(MixweightError, match=message) as caught:
        verify_file(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def _online_artifact(method: str) -> dict:
    """An online artifact as a run writes it: the mixer driven by hand for 9 steps, a phase every 3."""
    import json
    from types import SimpleNamespace

    import torch

    from mixweight.train.odm import ODMMixer
    from mixweight.train.online_doremi import DoReMiMixer
    from mixweight.train.step import StepResult

    domains = ["a", "b", "c"]
    if method == "odm":
        mixer = ODMMixer(domains, [0.5, 0.3, 0.2], every=3)
    elif method == "odm-exp3":
        mixer = ODMMixer(domains, [0.5, 0.3, 0.2], every=3, exploration=0.2, reward="exp3")
    else:
        mixer = DoReMiMixer(domains, [0.5, 0.3, 0.2], every=3, eta=0.5)
    for step in range(9):
        if mixer.phase_due(step):
            mixer.start_phase(step)
        losses = torch.tensor([1.0 + step % 3, 2.0, 3.5, 0.5], dtype=torch.float64)
        ids = torch.tensor([0, 1, 2, step % 3])
        signal = torch.stack([losses * 10, torch.full_like(losses, 10.0)], 1) if method == "doremi" else None
        mixer.observe(step, StepResult(losses, ids, torch.full_like(losses, 0.25), 0.0, 4, signal), None)
    manifest = SimpleNamespace(tokenizer={}, train_tokens=lambda: {d: 100 for d in domains}, config_hash="0" * 64)
    artifact = mixer.artifact(manifest, seed=0, total_steps=9)
    artifact.validate("online artifact")
    return json.loads(json.dumps(artifact.__dict__))


ONLINE_CASES = [
    ("no observed", "odm", lambda a: a["trajectory"][1].pop("observed"), r"entry 1 \(step 3\) has no 'observed'"),
    (
        "text signal",
        "odm",
        lambda a: a["trajectory"][2].update(signal="high"),
        r"\(step 6\) 'signal' must be 3 numbers",
    ),
    ("nan signal", "odm", lambda a: a["trajectory"][2].update(signal=[1.0, float("nan"), 2.0]), r"must be finite"),
    ("steps back", "odm", lambda a: a["trajectory"][2].update(step=2), r"has step 2; phases start at 0 and their"),
    ("no phase 0", "odm", lambda a: a["trajectory"].pop(0), r"entry 0 has step 3; the first phase starts at step 0"),
    ("no phases", "odm", lambda a: a.update(trajectory=[]), r"'trajectory' is empty"),
    ("bad reward", "odm", lambda a: a["method"].update(reward="paper"), r"'method.reward' must be one of"),
    ("bad exploration", "odm", lambda a: a["method"].update(exploration="fast"), r"must be a number or 'min"),
    ("big exploration", "odm", lambda a: a["method"].update(exploration=0.9), r"'method.exploration' must be in"),
    ("text alpha", "odm", lambda a: a["method"].update(alpha="x"), r"could not convert string to float"),
    ("prior short", "odm", lambda a: a["method"].update(prior=[1.0]), r"'method.prior' must be 3 numbers"),
    ("prior zero", "odm", lambda a: a["method"].update(prior=[0, 0, 0]), r"non-negative weights with a positive"),
    ("every zero", "odm", lambda a: a["method"].update(mixing_every=0), r"'method.mixing_every' must be an integer"),
    ("steps text", "odm", lambda a: a["method"].update(steps="9"), r"'method.steps' must be an integer >= 0"),
    ("negative signal", "odm", lambda a: a["trajectory"][2].update(signal=[-1.0, 2.0, 3.0]), r"gives no mixture"),
    ("edited average", "odm", lambda a: a.update(weights=[0.4, 0.4, 0.2]), r"at final weights \(phases averaged"),
    ("no alpha", "doremi", lambda a: a["trajectory"][1].pop("alpha"), r"\(step 3\) 'alpha' must be 3 numbers"),
    (
        "gamma above 1",
        "doremi",
        lambda a: a["method"].update(exploration=2),
        r"'method.exploration' must be in \[0, 1\]",
    ),
    ("edited alpha", "doremi", lambda a: a["trajectory"][2]["alpha"].reverse(), r"at phase at step 6"),
    ("exp3 edited sums", "odm-exp3", lambda a: a["trajectory"][2]["signal"].reverse(), r"at phase at step 6"),
    ("exp3 as smoothed", "odm-exp3", lambda a: a["method"].update(reward="smoothed"), r"at phase at step 3"),
]


@pytest.mark.parametrize("method", ["odm", "odm-exp3", "doremi"])
def test_an_online_artifact_as_written_verifies(tmp_path, method):
    import json

    from mixweight.domain.methods import verify_file

    artifact = _online_artifact(method)
    assert artifact["trajectory"][2]["weights"] != pytest.approx(artifact["trajectory"][0]["weights"], abs=1e-3)
    path = tmp_path / "w.json"
    path.write_text(json.dumps(artifact))
    name = method.split("-")[0]
    assert f"recomputed 3 online:{name} phases from their recorded state; 5 recorded" in verify_file(path)


@pytest.mark.parametrize("name, method, edit, message", ONLINE_CASES, ids=[c[0] for c in ONLINE_CASES])
def test_a_malformed_online_artifact_is_one_verify_line(tmp_path, name, method, edit, message):
    import json

    from mixweight.domain.methods import verify_file

    raw = _online_artifact(method)
    edit(raw)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(MixweightError, match=message) as caught:
        verify_file(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)
