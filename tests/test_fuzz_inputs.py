"""Seeded fuzzing of every file and command line a user hands mixweight: each ends in success or one error line.

A MixweightError is what `mixweight` prints as one `mixweight: error: ...` line; any other
exception would reach the user as a traceback. The file cases are random bytes, random JSON
structures, and plausible-looking files with one field mangled, for weights files,
schedules, corpus manifests and pipeline YAML: a few hundred cases, a few seconds. The command cases
(below) run `mixweight` itself on every command with hostile options: a fast subset by default, 500
in the slow suite.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
from pathlib import Path

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


# --- every command and every option, from the command line ------------------------------------------------------------
# Each case copies a sandbox (a two-domain corpus, a finished run, weights artifacts, a pipeline config, a user's own
# files), starts from a command line that runs, and replaces one to three of its options (any flag the command's parser
# has, positional arguments too) with a hostile value: inf, NaN, huge and negative numbers, the corpus, the run or a
# user's file where an output goes, a file where a directory goes and back, file:// URLs, a FIFO, /dev/zero, odd text.
# Some cases also run on a disk that fills up or is read-only (an OSError injected at the n-th file opened for writing).
# Every case must end in exit 0 or in exactly one `mixweight: error:` line (exit 2), never a traceback; a refused
# command adds, changes and removes nothing; a command that runs changes nothing outside its own outputs and removes
# nothing it did not make; no process it started is left running (but the resource tracker and torch.compile's
# worker pool, which a process starts once and keeps).
FAST_COMMAND_CASES = 30  # the default suite; the slow one runs SLOW_COMMAND_CASES
SLOW_COMMAND_CASES = 500
SPEC = {"model_type": "gpt2", "n_layer": 1, "n_head": 1, "n_embd": 8, "n_positions": 32, "tie_word_embeddings": True}
TRAIN_SMALL = ["--steps", "1", "--batch-size", "2", "--eval-every", "0", "--eval-blocks", "1", "--no-progress"]
PROXY_SMALL = ["--steps", "1", "--train.batch-size", "2", "--train.eval-blocks", "1", "--train.no-progress"]
BASE_COMMANDS = {
    "data synth": ["data", "synth", "--out", "new", "--tokens-per-domain", "256", "--seq-len", "16"],
    "data prepare": [
        "data",
        "prepare",
        "--input",
        "raw.jsonl",
        "--out",
        "new",
        "--seq-len",
        "16",
        "--val-fraction",
        "0.3",
    ],
    "train": ["train", "--data", "corpus", "--model", "spec.json", "--out", "newrun", *TRAIN_SMALL],
    "eval": ["eval", "run"],
    "compare": ["compare", "run", "--out", "report"],
    "weights export": ["weights", "export", "doremi.json", "--format", "json"],
    "weights verify": ["weights", "verify", "regmix.json"],
    "weights doremi": [
        "weights",
        "doremi",
        "--data",
        "corpus",
        "--proxy",
        "spec.json",
        "--out",
        "w.json",
        *PROXY_SMALL,
    ],
    "weights doge": ["weights", "doge", "--data", "corpus", "--proxy", "spec.json", "--out", "w.json", *PROXY_SMALL],
    "weights regmix": [
        *["weights", "regmix", "--data", "corpus", "--proxy", "spec.json", "--out", "w.json", "--runs", "3"],
        *PROXY_SMALL,
    ],
    "pipeline": ["pipeline", "p.yaml", "--out", "pipe"],
    "doctor": ["doctor"],
}
NUMBERS = ["0", "-1", "1", "2", "3", "0.5", "-0.0", "inf", "-inf", "nan", "1e400", "1e-400", "1e26", str(2**64)]
NUMBERS += [str(10**20), "", " ", "0x10", "1_0", "１", "many"]  # none valid and large: no case runs for long
PATHS = ["corpus", "run", "notes.txt", "mine", "doremi.json", "regmix.json", "p.yaml", "spec.json", "raw.jsonl", "."]
PATHS += ["missing/x", "corpus/manifest.json", "corpus/train", "run/checkpoints/step-1", "run/config.yaml", "run/eval"]
PATHS += ["/dev/zero", "/dev/null", "fifo", "mine/new", "new", "newrun", "w.json", "report", "a" * 300, "漢" * 100]
PATHS += ["new\nline", "x\x00y", "file://relative", "http://example.invalid/corpus", "s3:/", "", "-", "~"]
URLS = [
    "file://{root}/corpus",
    "file://{root}/mine",
    "file://{root}/new",
    "file://{root}/corpus/sub",
    "file://{root}/run",
]
WORDS = ["natural", "uniform", "online:odm", "online:doremi", "online:x", "byte", "bpe:300", "bpe:0", "bpe:99999999999"]
WORDS += ["gpt2-micro", "tensorboard", "wandbb", "mlflow", "none", "linupper", "fast", "all", "mix", "web,code", ","]
WORDS += ["web", "code", "doremi=doremi.json", "=x", "step-1", "loglinear", "lightgbm", "json", "megatron", "csv"]


def _sandbox_template(root: Path) -> Path:
    """The files every command case starts from (copied per case): what a user's directory might hold."""
    from mixweight.data.prepare import prepare_corpus
    from mixweight.train.config import TrainConfig
    from mixweight.train.loop import train

    template = root / "template"
    template.mkdir()
    rows = [
        {"text": f"{d} document {i} " * 6, "meta": {"redpajama_set_name": d}}
        for d in ("web", "code")
        for i in range(40)
    ]
    (template / "raw.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    prepare_corpus(template / "raw.jsonl", template / "corpus", seq_len=16, val_fraction=0.3)
    (template / "spec.json").write_text(json.dumps(SPEC))
    run = TrainConfig(
        data=str(template / "corpus"),
        out=str(template / "run"),
        model=str(template / "spec.json"),
        steps=1,
        batch_size=2,
        eval_every=0,
        eval_blocks=1,
        progress=False,
    )
    run.validate()
    train(run)
    provenance = {"corpus": str(template / "corpus"), "domain_token_counts": {"web": 500, "code": 500}}
    artifact = {
        "domains": ["web", "code"],
        "weights": [0.5, 0.5],
        "method": {"name": "doremi"},
        "provenance": provenance,
    }
    (template / "doremi.json").write_text(json.dumps(artifact))
    from tests.test_weights_hostile import REGMIX

    (template / "regmix.json").write_text(json.dumps(REGMIX))
    small = {"model": "spec.json", "steps": 1, "batch_size": 2, "eval_blocks": 1, "eval_every": 0, "progress": False}
    pipeline = {"data": {"path": "corpus"}, "train": small, "doremi": None, "doge": None, "regmix": None}
    (template / "p.yaml").write_text(yaml.safe_dump({**pipeline, "arms": {"u": {"domain_weights": "uniform"}}}))
    (template / "notes.txt").write_text("the user's notes")
    (template / "mine").mkdir()
    (template / "mine" / "thesis.tex").write_text("the user's thesis")
    return template


@pytest.fixture(scope="module")
def sandbox_template(tmp_path_factory) -> Path:
    return _sandbox_template(tmp_path_factory.mktemp("commands"))


def _parsers() -> dict:
    from mixweight.cli import build_parser

    def sub(parser):
        return parser._subparsers._group_actions[0].choices  # argparse keeps subcommands here

    top = sub(build_parser())
    found = {"train": top["train"], "pipeline": top["pipeline"], "eval": top["eval"], "compare": top["compare"]}
    found["doctor"] = top["doctor"]
    found.update({f"data {k}": v for k, v in sub(top["data"]).items()})
    found.update({f"weights {k}": v for k, v in sub(top["weights"]).items()})
    return found


def _hostile_value(rng: random.Random, action, root: Path) -> str:
    if action.type in (int, float):
        return rng.choice(NUMBERS)
    pools = [PATHS, WORDS, [u.format(root=root) for u in URLS]]
    if action.choices:
        pools.append([str(c) for c in action.choices])
    return rng.choice(rng.choice(pools))


def mutated_command(rng: random.Random, command: str, parser, root: Path) -> list[str]:
    """BASE_COMMANDS[command] with one to three options replaced, added or removed (any of the parser's actions)."""
    argv = list(BASE_COMMANDS[command])
    words = len(command.split())
    actions = [a for a in parser._actions if a.dest != "help"]
    for _ in range(rng.randint(1, 3)):
        action = rng.choice(actions)
        if not action.option_strings:  # a positional argument: replaced in place
            positions = [
                i for i in range(words, len(argv)) if not argv[i].startswith("-") and not argv[i - 1].startswith("--")
            ]
            if positions:
                argv[rng.choice(positions)] = _hostile_value(rng, action, root)
            continue
        flag = rng.choice(action.option_strings)
        if action.nargs == 0:  # a switch: given, or given twice
            argv.append(flag)
            continue
        value = _hostile_value(rng, action, root)
        if flag in argv and rng.random() < 0.7:
            argv[argv.index(flag) + 1] = value
        elif rng.random() < 0.2:
            argv.append(f"{flag}={value}")
        else:
            argv += [flag, value]
    return argv


OUTPUT_FLAGS = ("--out", "--work-dir", "--cache-dir")


def own_outputs(argv: list[str], root: Path) -> list[Path]:
    """Where the command may write: its --out, --work-dir and --cache-dir (with what a weights command writes beside
    its file: <stem>.work, <stem>_*.png, temporaries), the base command's own outputs, what `eval` writes into the
    run, and the cache."""
    outputs = [root / "cache", root / "w.work", root / "pipe", root / "newrun", root / "new", root / "report"]
    for i, word in enumerate(argv):
        flag, _, inline = word.partition("=")
        value = inline if inline else (argv[i + 1] if i + 1 < len(argv) else None)
        if flag in OUTPUT_FLAGS and value:
            path = Path(value.split("://", 1)[-1]) if value.startswith("file://") else root / value
            outputs.append(path)
            try:
                outputs += list(path.parent.glob(f"{path.stem}.work")) + list(path.parent.glob(f"{path.stem}_*.png"))
                outputs += list(path.parent.glob(f".{path.name}*"))
            except (OSError, ValueError):  # a name the OS refuses: the command wrote nothing there
                pass
    if argv[:1] == ["eval"] and len(argv) > 1:
        run = root / argv[1]
        outputs += [run / "eval", run / "eval.json", run / ".lock"]
    return outputs


def run_command_case(rng: random.Random, template: Path, workdir: Path, command: str, parsers: dict, monkeypatch):
    from tests.sandbox import assert_refused, changes, failing_writes, listing, live_children, run_cli, stray_children

    root = workdir / "sandbox"
    shutil.copytree(template, root, symlinks=True)
    os.mkfifo(root / "fifo")
    monkeypatch.chdir(root)
    monkeypatch.setenv("MIXWEIGHT_CACHE", str(root / "cache"))
    monkeypatch.delenv("MIXWEIGHT_CORPUS_CACHE", raising=False)
    argv = mutated_command(rng, command, parsers[command], root)
    before = listing(root)
    children = live_children()
    failing = rng.random() < 0.15  # a disk that fills up or turns read-only partway
    if failing:
        with failing_writes(after=rng.randint(0, 12), code=rng.choice([errno.ENOSPC, errno.EROFS]), under=root):
            outcome = run_cli(argv)
    else:
        outcome = run_cli(argv)
    after = listing(root)
    assert stray_children(children) == {}, argv  # no pool, loader worker or launcher left running
    assert "Traceback" not in outcome.err, (argv, outcome.err[-3000:])
    assert outcome.code in (0, 2), (argv, outcome.code, outcome.err[-2000:])
    outputs = own_outputs(argv, root)
    replaced = outputs if "--overwrite" in argv else []  # --overwrite replaces a corpus (only a corpus: checked)
    if outcome.code == 2:
        assert_refused(outcome, argv)
        # a write cut short may leave part of its own outputs; a remote corpus's cache copy, mixweight's own
        # space, may hold what was fetched before the refusal (incomplete copies have no manifest: fetched again)
        allowed = outputs if failing else [root / "cache"]
        assert changes(before, after, ok=allowed, removable=replaced if failing else []) == [], (argv, outcome.err)
    else:
        assert changes(before, after, ok=outputs, removable=replaced) == [], (argv, outcome.err[-500:])
    shutil.rmtree(root)
    return "accepted" if outcome.code == 0 else "refused"


def _command_cases(count: int, seed: int, template: Path, tmp_path: Path, monkeypatch) -> dict:
    import torch

    torch.set_num_threads(1)
    rng = random.Random(seed)
    parsers = _parsers()
    tally: dict = {}
    for index in range(count):
        command = rng.choice(sorted(BASE_COMMANDS))
        workdir = tmp_path / f"case-{index}"
        workdir.mkdir()
        with monkeypatch.context() as patch:
            outcome = run_command_case(rng, template, workdir, command, parsers, patch)
        tally.setdefault(command, {}).setdefault(outcome, 0)
        tally[command][outcome] += 1
    return tally


def test_a_process_a_command_leaves_running_is_found():
    """The fuzz's check of children: a child started after the listing is found until it ends; the helpers a process
    keeps are not."""
    import subprocess
    import sys

    from tests.sandbox import live_children, stray_children

    before = live_children()
    kept = "import time; time.sleep(600)  # multiprocessing.resource_tracker"  # a kept helper, by its command line
    helper = subprocess.Popen([sys.executable, "-c", kept])
    stray = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        assert set(stray_children(before)) == {stray.pid}
    finally:
        for process in (helper, stray):
            process.kill()
            process.wait()
    assert stray_children(before) == {}


def test_every_command_and_option_fuzzed_fast(sandbox_template, tmp_path, monkeypatch):
    tally = _command_cases(FAST_COMMAND_CASES, 7, sandbox_template, tmp_path, monkeypatch)
    assert sum(n for t in tally.values() for n in t.values()) == FAST_COMMAND_CASES
    assert any("refused" in t for t in tally.values())


@pytest.mark.slow
def test_every_command_and_option_fuzzed_500_cases(sandbox_template, tmp_path, monkeypatch):
    tally = _command_cases(SLOW_COMMAND_CASES, 2024, sandbox_template, tmp_path, monkeypatch)
    assert set(tally) == set(BASE_COMMANDS), tally  # every command was reached
    parsers = _parsers()
    takes_values = [c for c in tally if any(a.nargs != 0 for a in parsers[c]._actions)]  # doctor has switches only
    assert all(tally[c].get("refused") for c in takes_values), tally  # every command that can be refused was
