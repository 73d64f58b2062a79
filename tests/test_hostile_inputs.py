"""The one-line-error list of hostile inputs, one table across commands.

Every row is an input a careless or hostile user can give; each must end in exactly one
`mixweight: error:` line (exit code 2) that names the culprit, never a traceback, and must
write nothing. Deeper tests of each area live beside it (test_run_safety.py,
test_corpus_safety.py, test_weights_hostile.py, test_pipeline_safety.py); this table is the
place to see the whole list at once.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from mixweight.train.loop import train

DOMAINS = ["redundant", "noise", "unigram", "markov1", "markov2", "arithmetic", "copy"]


@pytest.fixture(scope="module")
def finished_run(synth_corpus, tiny_spec, tmp_path_factory, train_config) -> Path:
    run = tmp_path_factory.mktemp("hostile") / "run"
    config = train_config(
        synth_corpus,
        tiny_spec,
        run,
        steps=2,
        batch_size=4,
        warmup_steps=1,
        eval_every=0,
        eval_blocks=2,
        checkpoint_every=2,
        log_every=1,
        progress=False,
    )
    train(config)
    return run


def _jsonl(path: Path, domain: str) -> Path:
    rows = [{"text": f"document {i} " * 40, "meta": {"redpajama_set_name": domain}} for i in range(20)]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def _weights_text(tmp: Path, text: str) -> Path:
    path = tmp / "weights.json"
    path.write_text(text)
    return path


UNIFORM = json.dumps({"domains": DOMAINS, "weights": [1 / 7] * 7})


def _with_auto_map(config_path: Path) -> None:
    raw = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**raw, "model_type": "mystery-lm", "auto_map": {"AutoModelForCausalLM": "m.M"}}))


def _prepare(tmp, domain):
    return [
        "data",
        "prepare",
        "--input",
        _jsonl(tmp / "in.jsonl", domain),
        "--out",
        tmp / "out",
        "--seq-len",
        "16",
        "--val-fraction",
        "0.5",
    ]


def _train(ctx, *extra):
    return [
        "train",
        "--data",
        ctx["corpus"],
        "--model",
        ctx["spec"],
        "--out",
        ctx["tmp"] / "out",
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--eval-every",
        "0",
        "--eval-blocks",
        "2",
        "--no-progress",
        *extra,
    ]


def _case_weights(text):
    return lambda ctx: _train(ctx, "--domain-weights", _weights_text(ctx["tmp"], text))


def _case_reference_with_auto_map(ctx):
    reference = shutil.copytree(ctx["run"], ctx["tmp"] / "reference")
    _with_auto_map(reference / "checkpoints" / "step-2" / "model" / "config.json")
    return [
        "weights",
        "doremi",
        "--data",
        ctx["corpus"],
        "--proxy",
        ctx["spec"],
        "--reference",
        reference,
        "--steps",
        "1",
        "--batch-size",
        "7",
        "--out",
        ctx["tmp"] / "w.json",
        "--no-progress",
    ]


def _case_eval_with_auto_map(ctx):
    run = shutil.copytree(ctx["run"], ctx["tmp"] / "run")
    _with_auto_map(run / "checkpoints" / "step-2" / "model" / "config.json")
    return ["eval", run]


def _case_out_is_a_file(ctx):
    (ctx["tmp"] / "out").write_text("my notes")
    return _train(ctx)


def _case_pipeline(data_section):
    def build(ctx):
        path = ctx["tmp"] / "pipeline.yaml"
        path.write_text(
            json.dumps(
                {"data": data_section, "doremi": None, "doge": None, "arms": {"uniform": {"domain_weights": "uniform"}}}
            )
        )
        return ["pipeline", path, "--out", ctx["tmp"] / "out"]

    return build


CASES = {
    # name: (argv builder, what the line must say)
    "domain name of 300 characters": (
        lambda ctx: _prepare(ctx["tmp"], "a" * 300),
        r"in\.jsonl line 1: domain .* 300 UTF-8 bytes",
    ),
    "domain name of 100 CJK characters": (
        lambda ctx: _prepare(ctx["tmp"], "漢" * 100),
        r"in\.jsonl line 1: domain .* 300 UTF-8 bytes",
    ),
    "domain name with whitespace": (
        lambda ctx: _prepare(ctx["tmp"], "web pages"),
        r"in\.jsonl line 1: domain 'web pages'.*whitespace",
    ),
    "weights: 1e400 written as an integer": (
        _case_weights(UNIFORM.replace("0.14285714285714285", "1" + "0" * 400, 1)),
        r"weights\.json",
    ),
    "weights: non-string domain names": (
        _case_weights(json.dumps({"domains": list(range(7)), "weights": [1 / 7] * 7})),
        r"weights\.json.*domains",
    ),
    "weights: method not a mapping": (
        _case_weights(json.dumps({**json.loads(UNIFORM), "method": "doremi"})),
        r"weights\.json.*method",
    ),
    "weights: provenance not a mapping": (
        _case_weights(json.dumps({**json.loads(UNIFORM), "provenance": [1, 2]})),
        r"weights\.json.*provenance",
    ),
    "train --out naming a file": (_case_out_is_a_file, r"out"),
    "weights doge --out naming a directory": (
        lambda ctx: (
            (ctx["tmp"] / "dir").mkdir()
            or [
                "weights",
                "doge",
                "--data",
                ctx["corpus"],
                "--proxy",
                ctx["spec"],
                "--steps",
                "1",
                "--out",
                ctx["tmp"] / "dir",
                "--no-progress",
            ]
        ),
        r"dir",
    ),
    "pipeline data: unknown key": (_case_pipeline({"synthetic": {"sead": 1}}), r"did you mean 'seed'"),
    "pipeline data: wrong type": (
        _case_pipeline({"synthetic": {"seq_len": "long"}}),
        r"'seq_len': expected an integer",
    ),
    "checkpoint with auto_map (eval)": (_case_eval_with_auto_map, r"auto_map"),
    "DoReMi reference with auto_map": (_case_reference_with_auto_map, r"auto_map"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_input_is_one_error_line(
    name, finished_run, synth_corpus, tiny_spec, tmp_path, monkeypatch, cli_refuses
):
    monkeypatch.chdir(tmp_path)
    build, pattern = CASES[name]
    ctx = {"tmp": tmp_path, "corpus": synth_corpus, "spec": tiny_spec, "run": finished_run}
    argv = build(ctx)
    before = sorted(p.name for p in tmp_path.iterdir())
    line = cli_refuses(argv)
    assert re.search(pattern, line), line
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # a refused command writes nothing


def test_no_model_or_tokenizer_load_trusts_remote_code():
    """Every from_pretrained/from_config call in the package says trust_remote_code=False."""
    package = Path(__file__).resolve().parents[1] / "mixweight"
    for path in package.rglob("*.py"):
        source = path.read_text()
        calls = re.findall(r"(?:Auto\w+|PreTrained\w+)\.from_(?:pretrained|config)\((.*?)\)\n", source, flags=re.S)
        for call in calls:
            assert "trust_remote_code=False" in call, f"{path}: from_pretrained/from_config({call[:60]}...)"
