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
