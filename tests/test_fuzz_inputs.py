"""Seeded fuzzing of every file a user hands mixweight: each input ends in success or a MixweightError.

A MixweightError is what `mixweight` prints as one `mixweight: error: ...` line; any other
exception would reach the user as a traceback. The cases are random bytes, random JSON
structures, and plausible-looking files with one field mangled, for weights files,
schedules, corpus manifests and pipeline YAML. A few hundred cases, a few seconds.
"""

from __future__ import annotations

import json
import random
import shutil

import pytest
import yaml

from mixweight.errors import MixweightError

CASES_PER_KIND = 120
DOMAINS = ["web", "code", "books"]
# Values chosen to break parsers: huge and non-finite numbers, wrong types, odd strings.
ODD_SCALARS = [
    None,
    True,
    False,
    0,
    -1,
    1,
    2**70,
    1e308,
    -0.0,
    0.5,
    "nan",
    "inf",
    "1e400",
    "",
    " ",
    "../x",
    "web",
    "code",
    "a" * 300,
    "漢字" * 60,
    "\x00",
    "\n",
    "natural",
    "uniform",
    [],
    {},
]


def random_json(rng: random.Random, depth: int = 0):
    """A random JSON value, biased toward the keys and shapes mixweight's files use."""
    roll = rng.random()
    if depth > 3 or roll < 0.35:
        return rng.choice(ODD_SCALARS)
    if roll < 0.65:
        keys = [
            "domains",
            "weights",
            "method",
            "provenance",
            "trajectory",
            "last_weights",
            "targets",
            "missing",
            "start_step",
            "replay",
            "warnings",
            "name",
            "x",
            *DOMAINS,
        ]
        return {rng.choice(keys): random_json(rng, depth + 1) for _ in range(rng.randint(0, 5))}
    return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]


def mangled(rng: random.Random, valid: dict | list):
    """`valid` with one value somewhere replaced by a random one."""
    value = json.loads(json.dumps(valid))
    node = value
    for _ in range(rng.randint(1, 3)):
        if isinstance(node, dict) and node:
            key = rng.choice(list(node))
            if rng.random() < 0.5 or not isinstance(node[key], (dict, list)):
                node[key] = random_json(rng)
                return value
            node = node[key]
        elif isinstance(node, list) and node:
            index = rng.randrange(len(node))
            if rng.random() < 0.5 or not isinstance(node[index], (dict, list)):
                node[index] = random_json(rng)
                return value
            node = node[index]
    return random_json(rng)


def payloads(rng: random.Random, valid) -> list[bytes]:
    """Random bytes, random JSON, mangled valid JSON, and text with a huge integer literal."""
    out = []
    for _ in range(CASES_PER_KIND):
        kind = rng.random()
        if kind < 0.15:
            out.append(bytes(rng.randrange(256) for _ in range(rng.randint(0, 64))))
        elif kind < 0.45:
            out.append(json.dumps(random_json(rng)).encode())
        elif kind < 0.9:
            out.append(json.dumps(mangled(rng, valid)).encode())
        else:
            out.append(json.dumps(valid).replace("0.5", "1" + "0" * 400, 1).encode())
    return out


def accepts_or_refuses(function, *args) -> str:
    """Run `function`; a MixweightError is a refusal, anything else escaping is a test failure."""
    try:
        function(*args)
    except MixweightError as exc:
        message = str(exc)
        assert message and "\n" not in message.strip(), f"multi-line error: {message!r}"
        return "refused"
    return "accepted"


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    from mixweight.data.manifest import load_manifest
    from mixweight.data.synthetic import write_synthetic_corpus

    corpus = tmp_path_factory.mktemp("fuzz") / "corpus"
    write_synthetic_corpus(corpus, seed=0, tokens_per_domain=2048, seq_len=32)
    return load_manifest(corpus)


def test_random_weights_files_are_accepted_or_refused_in_one_line(tmp_path, manifest):
    from mixweight.core.artifact import check_against_manifest, load_domain_weights

    rng = random.Random(0)
    valid = {
        "domains": manifest.domains,
        "weights": [1 / len(manifest.domains)] * len(manifest.domains),
        "method": {"name": "doremi"},
        "provenance": {"seed": 0},
        "trajectory": [{"step": 1, "weights": [0.5] + [0.5 / (len(manifest.domains) - 1)] * 6}],
    }
    outcomes = []
    for index, payload in enumerate(payloads(rng, valid)):
        path = tmp_path / f"w{index}.json"
        path.write_bytes(payload)

        def load_and_check(p=path):
            check_against_manifest(load_domain_weights(p), manifest, str(p))

        outcomes.append(accepts_or_refuses(load_and_check))
    assert "refused" in outcomes  # the generator does produce bad files


def test_random_schedules_are_accepted_or_refused_in_one_line(tmp_path, manifest):
    from mixweight.sampling.schedule import resolve_schedule

    rng = random.Random(1)
    valid = [
        {"start_step": 0, "weights": "natural"},
        {"start_step": 5, "weights": {d: 1 / len(manifest.domains) for d in manifest.domains}},
    ]
    for index, payload in enumerate(payloads(rng, valid)):
        suffix = ".yaml" if index % 2 else ".json"
        path = tmp_path / f"s{index}{suffix}"
        path.write_bytes(payload)
        accepts_or_refuses(resolve_schedule, manifest, str(path), 0)
        accepts_or_refuses(resolve_schedule, manifest, str(path), 3)


def test_random_manifests_are_accepted_or_refused_in_one_line(tmp_path, manifest):
    from mixweight.data.manifest import load_manifest

    rng = random.Random(2)
    valid = manifest.to_json()
    for index, payload in enumerate(payloads(rng, valid)):
        corpus = tmp_path / f"c{index}"
        corpus.mkdir()
        (corpus / "manifest.json").write_bytes(payload)
        accepts_or_refuses(load_manifest, corpus)
        shutil.rmtree(corpus)


def test_random_pipeline_yaml_is_accepted_or_refused_in_one_line(tmp_path):
    from mixweight.pipeline import load_pipeline_config

    rng = random.Random(3)
    valid = {
        "data": {"synthetic": {"seed": 0, "tokens_per_domain": 4096, "seq_len": 32}},
        "train": {"model": "gpt2-micro", "steps": 2},
        "doremi": None,
        "doge": {"steps": 2},
        "arms": {"uniform": {"domain_weights": "uniform"}, "doge": {"domain_weights": "doge"}},
        "seeds": [0],
        "report": {"baseline": "uniform"},
    }
    for index, payload in enumerate(payloads(rng, valid)):
        path = tmp_path / f"p{index}.yaml"
        # Half as YAML text (YAML is a superset of JSON, so the JSON payloads are YAML too).
        path.write_bytes(yaml.safe_dump(json.loads(payload)).encode() if index % 2 and _is_json(payload) else payload)
        accepts_or_refuses(load_pipeline_config, path)


def _is_json(payload: bytes) -> bool:
    try:
        json.loads(payload)
    except ValueError:
        return False
    return True


def test_random_regmix_artifacts_verify_or_are_refused_in_one_line(tmp_path):
    """`weights verify` on mangled regmix artifacts (it refits their swarm table): a verdict or one line."""
    from mixweight.domain.methods import verify_file
    from tests.test_weights_hostile import REGMIX

    rng = random.Random(1)
    outcomes = []
    for index, payload in enumerate(payloads(rng, REGMIX)[:30]):
        path = tmp_path / f"r{index}.json"
        path.write_bytes(payload)
        outcomes.append(accepts_or_refuses(verify_file, path))
    assert "refused" in outcomes
