"""The one-line-error list of hostile inputs, one table across commands.

Every row is an input a careless or hostile user can give; each must end in exactly one
`mixweight: error:` line (exit code 2) that names the culprit, never a traceback, and must
write nothing: every file and directory under the test's directory, the corpus and the run is
listed before and after (size, mtime, content), and nothing may be added, changed or removed (no
lock file either). Deeper tests of each area live beside it (test_run_safety.py,
test_corpus_safety.py, test_weights_hostile.py, test_pipeline_safety.py); this table is the
place to see the whole list at once. The rows after the first block are the cases of a 575-input
hostile run (data overwritten, tracebacks, silent wrong results), numbered as that report numbered them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from mixweight.train.loop import train
from tests.sandbox import changes, listing
from tests.test_weights_hostile import REGMIX

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


def _jsonl(path: Path, domain: str, text: str = "document {i} ") -> Path:
    rows = [{"text": text.format(i=i) * 40, "meta": {"redpajama_set_name": domain}} for i in range(20)]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def _file(ctx, name: str, text) -> Path:
    path = ctx["tmp"] / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text if isinstance(text, str) else json.dumps(text))
    return path


UNIFORM = json.dumps({"domains": DOMAINS, "weights": [1 / 7] * 7})
DOREMI_ARTIFACT = {**json.loads(UNIFORM), "method": {"name": "doremi"}}


def _with_auto_map(config_path: Path) -> None:
    raw = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**raw, "model_type": "mystery-lm", "auto_map": {"AutoModelForCausalLM": "m.M"}}))


def _prepare(tmp, domain, *extra):
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
        *extra,
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


def _weights(method: str, ctx, *extra):
    """`weights METHOD` on the corpus with a one-step tiny proxy; a row adds what it makes hostile (its --out...)."""
    runs = ("--runs", "8") if method == "regmix" else ()
    base = ["weights", method, "--data", ctx["corpus"], "--proxy", ctx["spec"], "--steps", "1", *runs]
    return [*base, "--train.no-progress", *(extra if "--out" in extra else (*extra, "--out", ctx["tmp"] / "w.json"))]


def _case_weights(text):
    return lambda ctx: _train(ctx, "--domain-weights", _file(ctx, "weights.json", text))


def _case_reference_with_auto_map(ctx):
    reference = shutil.copytree(ctx["run"], ctx["tmp"] / "reference")
    _with_auto_map(reference / "checkpoints" / "step-2" / "model" / "config.json")
    return [*_weights("doremi", ctx, "--reference", reference, "--train.batch-size", "7")]


def _run_copy(ctx, edit=None) -> Path:
    run = shutil.copytree(ctx["run"], ctx["tmp"] / "run", ignore=shutil.ignore_patterns(".lock"))
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace(str(ctx["run"]), str(run)))
    if edit is not None:
        edit(run / "checkpoints" / "step-2" / "model")
    return run


def _case_eval_with_auto_map(ctx):
    return ["eval", _run_copy(ctx, lambda model: _with_auto_map(model / "config.json"))]


def _case_out_is_a_file(ctx):
    (ctx["tmp"] / "out").write_text("my notes")
    return _train(ctx)


def _pipeline_file(ctx, sections, name="pipeline.yaml") -> Path:
    return _file(ctx, name, {"doremi": None, "doge": None, "regmix": None, **sections})


def _case_pipeline(data_section):
    def build(ctx):
        config = _pipeline_file(ctx, {"data": data_section, "arms": {"uniform": {"domain_weights": "uniform"}}})
        return ["pipeline", config, "--out", ctx["tmp"] / "out"]

    return build


def _pipeline_into(make_out):
    def build(ctx):
        out = make_out(ctx)
        config = _pipeline_file(ctx, {"data": {"path": ctx["corpus"]}, "arms": {"u": {"domain_weights": "uniform"}}})
        return ["pipeline", config, "--out", out]

    return build


def _user_dir(ctx, *files) -> Path:
    (ctx["tmp"] / "mine").mkdir(exist_ok=True)
    for name in files:
        _file(ctx, f"mine/{name}", "the user's own")
    return ctx["tmp"] / "mine"


def _export(ctx, provenance, *flags):
    artifact = _file(ctx, "w.json", {**json.loads(UNIFORM), "provenance": provenance})
    return ["weights", "export", artifact, *flags]


def _verify_regmix(edit):
    def build(ctx):
        artifact = json.loads(json.dumps(REGMIX))
        edit(artifact)
        return ["weights", "verify", _file(ctx, "regmix.json", artifact)]

    return build


def _surrogate_jsonl(ctx) -> Path:
    """A JSONL line whose text holds the JSON escape \\ud800 without its pair: valid JSON, not encodable text."""
    line = '{"text": "half \\ud800 of a pair", "meta": {"redpajama_set_name": "web"}}\n'
    return _file(ctx, "s.jsonl", line * 3)


def _fifo(ctx) -> Path:
    os.mkfifo(ctx["tmp"] / "fifo.jsonl")
    return ctx["tmp"] / "fifo.jsonl"


def _short_reference(ctx):
    def fewer_positions(model: Path) -> None:
        raw = json.loads((model / "config.json").read_text())
        (model / "config.json").write_text(json.dumps({**raw, "n_positions": 32}))

    reference = _run_copy(ctx, fewer_positions)
    return _train(
        ctx, "--domain-weights", "online:doremi", "--mixing.every", "1", "--mixing.doremi.reference", reference
    )


ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(9)
)

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
        lambda ctx: (ctx["tmp"] / "dir").mkdir() or _weights("doge", ctx, "--out", ctx["tmp"] / "dir"),
        r"dir is a directory; give a file path",
    ),
    "pipeline data: unknown key": (_case_pipeline({"synthetic": {"sead": 1}}), r"did you mean 'seed'"),
    "pipeline data: wrong type": (
        _case_pipeline({"synthetic": {"seq_len": "long"}}),
        r"'seq_len': expected an integer",
    ),
    "checkpoint with auto_map (eval)": (_case_eval_with_auto_map, r"auto_map"),
    "DoReMi reference with auto_map": (_case_reference_with_auto_map, r"auto_map"),
    # 1. a weights command's --out: never a file it did not write, an input, or inside a corpus or run
    "1 weights doge --out the corpus's manifest": (
        lambda ctx: _weights("doge", ctx, "--out", Path(ctx["corpus"]) / "manifest.json"),
        r"manifest\.json lies inside the corpus directory",
    ),
    "1 weights doremi --out a user's file": (
        lambda ctx: _weights("doremi", ctx, "--out", _file(ctx, "notes.jsonl", "{}\n")),
        r"notes\.jsonl exists and was not written by this command \(a file\)",
    ),
    "1 weights regmix --out a hand-written weights file": (
        lambda ctx: _weights("regmix", ctx, "--out", _file(ctx, "mine.json", UNIFORM)),
        r"mine\.json exists and was not written by this command",
    ),
    "1 weights doge --out a doremi artifact": (
        lambda ctx: _weights("doge", ctx, "--out", _file(ctx, "d.json", DOREMI_ARTIFACT)),
        r"d\.json exists and was not written by this command",
    ),
    "1 weights doremi --out its own --reference-weights": (
        lambda ctx: _weights(
            "doremi", ctx, "--reference-weights", _file(ctx, "d.json", DOREMI_ARTIFACT), "--out", ctx["tmp"] / "d.json"
        ),
        r"d\.json overlaps the input --reference-weights",
    ),
    "1 weights regmix --out inside a run": (
        lambda ctx: _weights("regmix", ctx, "--out", Path(ctx["run"]) / "w.json"),
        r"lies inside the run directory",
    ),
    "1 weights doge --out beside a user's plot": (
        lambda ctx: _file(ctx, "new_bars.png", "a picture") and _weights("doge", ctx, "--out", ctx["tmp"] / "new.json"),
        r"its plot .*new_bars\.png would replace a file",
    ),
    # 2. compare --out and pipeline --out: a report directory of their own
    "2 compare --out a user's directory": (
        lambda ctx: ["compare", ctx["run"], "--out", _user_dir(ctx, "report.md")],
        r"mine exists and was not written by this command \(it holds report\.md\)",
    ),
    "2 compare --out the corpus": (
        lambda ctx: ["compare", ctx["run"], "--out", ctx["corpus"]],
        r"is the corpus directory",
    ),
    "2 compare --out the run": (lambda ctx: ["compare", ctx["run"], "--out", ctx["run"]], r"is the run directory"),
    "2 compare --out inside the run": (
        lambda ctx: ["compare", ctx["run"], "--out", Path(ctx["run"]) / "report"],
        r"lies inside the run directory",
    ),
    "2 compare --out naming a file": (
        lambda ctx: ["compare", ctx["run"], "--out", _file(ctx, "notes.txt", "x")],
        r"notes\.txt exists and is not a directory",
    ),
    "2 pipeline --out a user's directory": (
        _pipeline_into(lambda ctx: _user_dir(ctx, "report/report.md")),
        r"pipeline --out .*mine exists and was not written by this command",
    ),
    "2 pipeline --out holding a pipeline.yaml that is not a mapping": (
        _pipeline_into(lambda ctx: _file(ctx, "p/pipeline.yaml", "- a list\n").parent),
        r"exists and was not written by this command \(it holds pipeline\.yaml\)",
    ),
    # 4. a file:// --out meets the rules of a local one
    "4 data prepare --out file:// inside its input": (
        lambda ctx: [
            "data",
            "prepare",
            "--input",
            _jsonl(_user_dir(ctx) / "in.jsonl", "web") and ctx["tmp"] / "mine",
            "--out",
            f"file://{ctx['tmp'] / 'mine' / 'sub'}",
        ],
        r"overlaps --input",
    ),
    "4 data synth --out file:// of a user's directory": (
        lambda ctx: ["data", "synth", "--out", f"file://{_user_dir(ctx, 'thesis.tex')}", "--tokens-per-domain", "512"],
        r"holds files that are not a mixweight corpus \(thesis\.tex\)",
    ),
    "4 data synth --out file:// inside a corpus": (
        lambda ctx: ["data", "synth", "--out", f"file://{ctx['corpus']}/sub", "--tokens-per-domain", "512"],
        r"lies inside the corpus directory",
    ),
    # 5. a weights command's --work-dir: new, empty or its own
    "5 weights regmix --work-dir the corpus": (
        lambda ctx: _weights("regmix", ctx, "--work-dir", ctx["corpus"]),
        r"--work-dir .* is the corpus directory",
    ),
    "5 weights regmix --work-dir the run": (
        lambda ctx: _weights("regmix", ctx, "--work-dir", ctx["run"]),
        r"--work-dir .* is the run directory",
    ),
    "5 weights regmix --work-dir a user's directory": (
        lambda ctx: _weights("regmix", ctx, "--work-dir", _user_dir(ctx, "thesis.tex")),
        r"--work-dir .*mine exists and was not written by this command",
    ),
    "5 weights regmix --work-dir naming a file": (
        lambda ctx: _weights("regmix", ctx, "--work-dir", _file(ctx, "notes.txt", "x")),
        r"--work-dir .*notes\.txt exists and is not a directory",
    ),
    "5 weights doremi --work-dir equal to --out": (
        lambda ctx: _weights("doremi", ctx, "--work-dir", ctx["tmp"] / "w.json", "--out", ctx["tmp"] / "w.json"),
        r"--work-dir .*w\.json overlaps the input --out",
    ),
    # 6. a refusal after the lock was taken leaves no lock file (nor the directory it made)
    "6 train on a copied run without --resume": (
        lambda ctx: _train(ctx, "--out", _run_copy(ctx)),
        r"already holds checkpoints; pass --resume",
    ),
    "6 pipeline whose arm's model does not fit the corpus": (
        lambda ctx: [
            "pipeline",
            _pipeline_file(
                ctx,
                {
                    "data": {"path": ctx["corpus"]},
                    "train": {"model": str(_file(ctx, "short.json", {"model_type": "gpt2", "n_positions": 32}))},
                    "arms": {"u": {"domain_weights": "uniform"}},
                },
            ),
            "--out",
            ctx["tmp"] / "new" / "out",
        ],
        r"arm 'u': .*seq_len 64 exceeds the model's 32 positions",
    ),
    # 7. inf is refused wherever NaN is
    "7 train --lr inf": (lambda ctx: _train(ctx, "--lr", "inf"), r"'lr': expected a finite number, got inf"),
    "7 train --config with lr: .inf": (
        lambda ctx: _train(ctx, "--config", _file(ctx, "c.yaml", "lr: .inf\n")),
        r"'lr': expected a finite number",
    ),
    "7 weights doremi --train.lr inf": (
        lambda ctx: _weights("doremi", ctx, "--train.lr", "inf"),
        r"'train\.lr': expected a finite number",
    ),
    "7 train --sample-weighting.r nan": (
        lambda ctx: _train(ctx, "--sample-weighting.r", "nan"),
        r"'sample_weighting.r': expected a number, got nan",
    ),
    "7 weights verify --tolerance inf": (
        lambda ctx: ["weights", "verify", _file(ctx, "r.json", REGMIX), "--tolerance", "inf"],
        r"'tolerance': expected a finite number",
    ),
    "7 weights export --max-epochs inf": (
        lambda ctx: _export(ctx, {}, "--format", "json", "--token-budget", "10", "--max-epochs", "inf"),
        r"'max_epochs': expected a finite number",
    ),
    # 8, 9. weights export trusts nothing in the file's provenance
    "8 export with a negative token count": (
        lambda ctx: (
            _export(ctx, {"domain_token_counts": {d: -5 for d in DOMAINS}}, "--format", "json")
            + ["--token-budget", "1000", "--max-epochs", "2"]
        ),
        r"domain_token_counts\.redundant is -5, not a positive number of tokens",
    ),
    "8 export with a zero token count": (
        lambda ctx: (
            _export(ctx, {"domain_token_counts": {d: 0 for d in DOMAINS}}, "--format", "json")
            + ["--token-budget", "1000", "--max-epochs", "2"]
        ),
        r"domain_token_counts\.redundant is 0, not a positive number",
    ),
    "8 export with boolean token counts": (
        lambda ctx: (
            _export(ctx, {"domain_token_counts": {d: True for d in DOMAINS}}, "--format", "json")
            + ["--token-budget", "1000"]
        ),
        r"domain_token_counts\.redundant is True",
    ),
    "9 export to Megatron of a corpus path with spaces": (
        lambda ctx: _export(ctx, {"corpus": "/data/my corpus"}, "--format", "megatron"),
        r"holds whitespace, and Megatron's --data-path is a whitespace-separated list",
    ),
    "9 export of a corpus path with a newline": (
        lambda ctx: _export(ctx, {"corpus": "/data/a\n0.5 /etc"}, "--format", "streams-yaml"),
        r"provenance\.corpus is '/data/a\\n0\.5 /etc', which holds control characters",
    ),
    "9 export of a corpus that is not a string": (
        lambda ctx: _export(ctx, {"corpus": ["a"]}, "--format", "megatron"),
        r"provenance\.corpus must be a path \(a string\), got \['a'\]",
    ),
    # 11. no runaway runs
    "11 an empty pipeline YAML": (
        lambda ctx: ["pipeline", _file(ctx, "p.yaml", ""), "--out", ctx["tmp"] / "out"],
        r"the pipeline config is empty",
    ),
    "11 pipeline steps: 10^26": (
        lambda ctx: ["pipeline", _pipeline_file(ctx, {"train": {"steps": 10**26}}), "--out", ctx["tmp"] / "out"],
        r"'steps': 100000000000000000000000000 is above the limit 1,000,000,000,000",
    ),
    "11 train --mixing.every 10^20": (
        lambda ctx: _train(ctx, "--domain-weights", "online:odm", "--mixing.every", str(10**20)),
        r"'mixing.every': 100000000000000000000 is above the limit",
    ),
    "11 data synth --tokens-per-domain 10^13": (
        lambda ctx: ["data", "synth", "--out", ctx["tmp"] / "c", "--tokens-per-domain", str(10**13)],
        r"'tokens_per_domain': 10000000000000 is above the limit 1,000,000,000 \(the synthetic corpus is made in",
    ),
    "11 weights regmix --runs 10^9": (
        lambda ctx: _weights("regmix", ctx, "--runs", str(10**9)),
        r"'runs': 1000000000 is above the limit 100,000",
    ),
    "11 data prepare --num-proc 10^6": (
        lambda ctx: _prepare(ctx["tmp"], "web", "--num-proc", str(10**6)),
        r"'num_proc': 1000000 is above the limit \d+ \(the CPUs this process may use",
    ),
    "11 train --batch-size 2^30": (
        lambda ctx: _train(ctx, "--batch-size", str(2**30)),
        r"'batch_size': 1073741824 is above the limit 1,048,576",
    ),
    # tracebacks of the hostile run, each one line now
    "eval: a truncated model.safetensors": (
        lambda ctx: ["eval", _run_copy(ctx, lambda m: (m / "model.safetensors").write_bytes(b"\x08\x00"))],
        r"cannot load the model .*truncated or corrupted",
    ),
    "eval: random bytes as model.safetensors": (
        lambda ctx: ["eval", _run_copy(ctx, lambda m: (m / "model.safetensors").write_bytes(os.urandom(4096)))],
        r"cannot load the model",
    ),
    "train --seed -1": (lambda ctx: _train(ctx, "--seed", "-1"), r"'seed': -1 is below the limit 0"),
    "train --seed 2^64": (lambda ctx: _train(ctx, "--seed", str(2**64)), r"'seed': 18446744073709551616 is above"),
    "data synth --seed -1": (
        lambda ctx: ["data", "synth", "--out", ctx["tmp"] / "c", "--seed", "-1"],
        r"'seed': -1 is below the limit 0",
    ),
    "weights regmix --seed -1": (lambda ctx: _weights("regmix", ctx, "--seed", "-1"), r"'seed': -1 is below"),
    "weights doge --seed 10^20": (lambda ctx: _weights("doge", ctx, "--seed", str(10**20)), r"'seed': .* is above"),
    "online DoReMi reference with fewer positions than the corpus": (
        _short_reference,
        r"its model has 32 positions, fewer than the corpus's seq_len 64",
    ),
    "YAML nested 50000 deep": (
        lambda ctx: _train(ctx, "--config", _file(ctx, "deep.yaml", "a: " + "[" * 50000 + "]" * 50000 + "\n")),
        r"deep\.yaml: not valid YAML \(nested too deeply",
    ),
    "YAML alias bomb": (
        lambda ctx: ["pipeline", _file(ctx, "bomb.yaml", ALIAS_BOMB), "--out", ctx["tmp"] / "out"],
        r"bomb\.yaml: not valid YAML \(the document expands to more than 1,000,000 values",
    ),
    "JSONL with a lone surrogate": (
        lambda ctx: ["data", "prepare", "--input", _surrogate_jsonl(ctx), "--out", ctx["tmp"] / "out"],
        r"s\.jsonl line 1: field 'text' holds a lone surrogate",
    ),
    "data prepare --input /dev/zero": (
        lambda ctx: ["data", "prepare", "--input", "/dev/zero", "--out", ctx["tmp"] / "out"],
        r"/dev/zero: not a regular file or directory",
    ),
    "data prepare --input a FIFO": (
        lambda ctx: ["data", "prepare", "--input", _fifo(ctx), "--out", ctx["tmp"] / "out"],
        r"fifo\.jsonl: not a regular file or directory",
    ),
    "--cache-dir naming a file": (
        lambda ctx: _train(ctx, "--cache-dir", _file(ctx, "notes.txt", "x")),
        r"--cache-dir .*notes\.txt exists and is not a directory",
    ),
    "data prepare --tokenizer bpe:99999999999": (
        lambda ctx: _prepare(ctx["tmp"], "web", "--tokenizer", "bpe:99999999999"),
        r"VOCAB may be at most 1,048,576",
    ),
    "weights verify: a regmix prior of 0": (
        _verify_regmix(lambda a: a["method"]["prior_weights"].update(b=0)),
        r"method\.prior_weights\.b is 0, expected a positive finite number",
    ),
    "weights verify: a negative regmix prior": (
        _verify_regmix(lambda a: a["method"]["prior_weights"].update(a=-0.5)),
        r"method\.prior_weights\.a is -0\.5, expected a positive",
    ),
    "an unknown flag value (argparse's own error)": (
        lambda ctx: _train(ctx, "--steps", "many"),
        r"mixweight train: argument --steps: invalid int value: 'many'",
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_input_is_one_error_line(
    name, finished_run, synth_corpus, tiny_spec, tmp_path, monkeypatch, cli_refuses
):
    monkeypatch.chdir(tmp_path)
    build, pattern = CASES[name]
    ctx = {"tmp": tmp_path, "corpus": synth_corpus, "spec": tiny_spec, "run": finished_run}
    argv = build(ctx)
    before = listing(tmp_path, synth_corpus, finished_run)
    line = cli_refuses(argv)
    assert re.search(pattern, line), line
    assert len(line) < 2200  # a value is never echoed whole
    assert changes(before, listing(tmp_path, synth_corpus, finished_run)) == []  # a refused command writes nothing


def test_no_model_or_tokenizer_load_trusts_remote_code():
    """Every from_pretrained/from_config call in the package says trust_remote_code=False."""
    package = Path(__file__).resolve().parents[1] / "mixweight"
    for path in package.rglob("*.py"):
        source = path.read_text()
        calls = re.findall(r"(?:Auto\w+|PreTrained\w+)\.from_(?:pretrained|config)\((.*?)\)\n", source, flags=re.S)
        for call in calls:
            assert "trust_remote_code=False" in call, f"{path}: from_pretrained/from_config({call[:60]}...)"
