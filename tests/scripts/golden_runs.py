"""Golden tiny runs: every method and arm kind, in float64, summarised into one JSON file.

    python tests/scripts/golden_runs.py OUT_DIR            runs every case under OUT_DIR, writes OUT_DIR/summary.json
    python tests/scripts/golden_runs.py OUT_DIR --only a,b runs only the named cases (and what they need; all: all)

What a case leaves (metrics.jsonl without its timings, eval.json, every checkpoint's state.json,
domain_weights.json, repetition.json, the model's parameters, a command's printed result, the
pipeline's report.json) is what a restructuring of the wiring must leave unchanged. The run
paths are replaced by ROOT, so two summaries made in different directories compare equal.

In float64 (as tests/scripts/float64_mixweight.py) and one thread, so a summary made on another
CPU differs from this one by rounding alone (~1e-12 relative); tests/test_golden_runs.py
compares bytes where a rerun on the same machine is the claim, else floats to 1e-6 relative.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # this checkout's mixweight, whatever is installed

torch.set_default_dtype(torch.float64)
torch.set_num_threads(1)

from mixweight.cli import main  # noqa: E402  (after the dtype: nothing may be built before it)

SPEC = {
    "model_type": "gpt2",
    "n_layer": 2,
    "n_head": 2,
    "n_embd": 32,
    "n_positions": 64,
    "resid_pdrop": 0.0,
    "embd_pdrop": 0.0,
    "attn_pdrop": 0.0,
    "tie_word_embeddings": True,
}
TRAIN = (
    "--steps 6 --batch-size 8 --lr 3e-3 --final-lr 3e-4 --warmup-steps 1 --eval-every 3 --eval-blocks 4 "
    "--log-every 2 --checkpoint-every 4 --no-progress"
).split()
PROXY_TRAIN = (
    "--train.batch-size 14 --train.lr 3e-3 --train.final-lr 3e-4 --train.warmup-steps 1 --train.no-progress"
).split()

# name -> (the cases it needs first, argv after `mixweight`; {C} corpus, {S} spec, {R} root)
TRAIN_CASES = {
    "natural": [],
    "uniform-accum2": ["--domain-weights", "uniform", "--grad-accum", "2", "--batch-size", "4"],
    "schedule": ["--domain-weights", "{R}/schedule.yaml"],
    "per-stream": ["--domain-weights", "uniform", "--batching", "per_stream"],
    "max-epochs": ["--domain-weights", "uniform", "--max-epochs", "2.5"],
    "linupper-step": (
        "--sample-weighting linupper --sample-weighting.r 0.4 --sample-weighting.warmup-steps 2 "
        "--sample-weighting.start 100"
    ).split(),
    "quadratic-linear": (
        "--sample-weighting quadratic --sample-weighting.schedule linear --sample-weighting.warmup-steps 3"
    ).split(),
    "extremes-cap-micro": (
        "--sample-weighting extremes --sample-weighting.cap 2 --sample-weighting.scope micro_batch --grad-accum 2 "
        "--batch-size 4"
    ).split(),
    "linupper-burnin-accum2": (
        "--sample-weighting linupper --sample-weighting.schedule burnin --sample-weighting.warmup-steps 2 "
        "--grad-accum 2 --batch-size 4"
    ).split(),
    "doremi-trajectory": ["--domain-weights", "{R}/weights/doremi.json", "--domain-weights-every", "2"],
    "doge-weights": ["--domain-weights", "{R}/weights/doge.json", "--sample-weighting", "linupper"],
    "regmix-weights": ["--domain-weights", "{R}/weights/regmix.json"],
    "odm": ["--domain-weights", "online:odm", "--mixing.every", "2"],
    "odm-natural-fixed": (
        "--domain-weights online:odm --mixing.every 2 --mixing.prior natural --mixing.odm.exploration 0.1 "
        "--mixing.odm.alpha 0.5"
    ).split(),
    "online-doremi": [
        *"--domain-weights online:doremi --mixing.every 2 --mixing.doremi.eta 0.02".split(),
        *"--mixing.doremi.smoothing 0.1 --mixing.doremi.reference {R}/weights/doremi.work/round-0/reference".split(),
        *"--sample-weighting linupper".split(),
    ],
}
NEEDS = {
    "doremi-trajectory": ["w-doremi"],
    "online-doremi": ["w-doremi"],
    "doge-weights": ["w-doge"],
    "regmix-weights": ["w-regmix"],
    "export-verify": ["w-doremi", "w-doge"],
}
WEIGHTS_CASES = {
    "w-doremi": [
        *"weights doremi --data {C} --out {R}/weights/doremi.json --proxy {S} --steps 6 --reference-steps 6".split(),
        *"--log-every 2".split(),
        *PROXY_TRAIN,
    ],
    "w-doge": [
        *"weights doge --data {C} --out {R}/weights/doge.json --proxy {S} --steps 5 --log-every 2".split(),
        *PROXY_TRAIN,
    ],
    "w-regmix": [
        *"weights regmix --data {C} --out {R}/weights/regmix.json --proxy {S} --runs 8 --steps 3".split(),
        *"--token-budget 8000 --max-epochs 3 --train.batch-size 8 --train.no-progress".split(),
    ],
}
PIPELINE = {
    "data": {"synthetic": {"seed": 0, "tokens_per_domain": 4096, "seq_len": 64}},
    "train": {
        "steps": 4,
        "batch_size": 8,
        "lr": 3e-3,
        "final_lr": 3e-4,
        "warmup_steps": 1,
        "eval_every": 2,
        "eval_blocks": 4,
        "log_every": 2,
        "checkpoint_every": 100,
    },
    "doremi": {"steps": 4, "reference_steps": 4, "log_every": 2, "train": {"batch_size": 14, "warmup_steps": 1}},
    "doge": {"steps": 4, "log_every": 2, "train": {"batch_size": 14, "warmup_steps": 1}},
    "regmix": {"runs": 8, "steps": 2, "train": {"batch_size": 8}},
    "arms": {
        "uniform": {"domain_weights": "uniform"},
        "linupper": {"domain_weights": "uniform", "sample_weighting": {"name": "linupper", "warmup_steps": 1}},
        "doremi": {"domain_weights": "doremi"},
        "doge+linupper": {"domain_weights": "doge", "sample_weighting": "linupper"},
        "regmix": {"domain_weights": "regmix"},
        "odm": {"domain_weights": "online:odm", "mixing": {"every": 2}},
        "online-doremi": {"domain_weights": "online:doremi", "mixing": {"every": 2, "doremi": {"eta": 0.05}}},
    },
    "seeds": [0, 1],
    "report": {"baseline": "uniform"},
    "progress": False,
}
ALL = [*WEIGHTS_CASES, *TRAIN_CASES, "export-verify", "two-processes", "pipeline"]


def _cli(argv: list[str]) -> str:
    """Run `mixweight ARGV` in this process; its stdout (the command's result)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main(argv)
        except SystemExit as exc:
            raise RuntimeError(f"mixweight {' '.join(argv)} exited {exc.code}") from exc
    return out.getvalue()


def _fill(argv: list[str], root: Path) -> list[str]:
    return [a.format(C="corpus", S="spec.json", R=".") for a in argv]  # relative to the root, the working dir


def _metrics(path: Path) -> list[dict]:
    records = []
    for line in path.read_text().splitlines():
        record = json.loads(line)
        record.pop("time", None)  # wall-clock throughput: the one thing that may differ
        records.append(record)
    return records


def _parameters(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    state = load_file(str(model_dir / "model.safetensors"))
    return {name: [float(t.double().sum()), float(t.double().norm())] for name, t in sorted(state.items())}


def summarise_run(run: Path) -> dict:
    summary: dict = {"metrics": _metrics(run / "metrics.jsonl")}
    for name in ("eval.json", "domain_weights.json", "repetition.json"):
        if (run / name).is_file():
            summary[name] = json.loads((run / name).read_text())
    checkpoints = sorted((run / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    summary["checkpoints"] = {c.name: json.loads((c / "state.json").read_text()) for c in checkpoints}
    if checkpoints:
        summary["parameters"] = _parameters(checkpoints[-1] / "model")
    return summary


def _runs_under(directory: Path) -> dict:
    return {
        str(p.parent.relative_to(directory)): summarise_run(p.parent)
        for p in sorted(directory.rglob("metrics.jsonl"))
        if ".replaced-" not in str(p)
    }


def run_case(name: str, root: Path) -> dict:
    if name in WEIGHTS_CASES:
        printed = _cli(_fill(WEIGHTS_CASES[name], root))
        method = name.split("-", 1)[1]
        artifact = json.loads((root / "weights" / f"{method}.json").read_text())
        return {"printed": printed, "artifact": artifact, "runs": _runs_under(root / "weights" / f"{method}.work")}
    if name in TRAIN_CASES:
        out = Path("runs") / name
        printed = _cli(["train", *_fill(["--data", "{C}", "--model", "{S}"], root), "--out", str(out), *TRAIN,
                        *_fill(TRAIN_CASES[name], root)])  # fmt: skip
        return {"printed": printed, "run": summarise_run(out)}
    if name == "export-verify":
        return {
            f"{method}-{what}": _cli(argv)
            for method in ("doremi", "doge")
            for what, argv in (
                ("json", ["weights", "export", f"weights/{method}.json", "--format", "json"]),
                ("megatron", ["weights", "export", f"weights/{method}.json", "--format", "megatron"]),
                ("verify", ["weights", "verify", f"weights/{method}.json"]),
            )
        }
    if name == "two-processes":
        out = Path("runs") / name
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        command += [str(REPO / "tests" / "scripts" / "float64_mixweight.py"), "train"]
        command += _fill(["--data", "{C}", "--model", "{S}"], root) + ["--out", str(out), *TRAIN]
        command += "--batch-size 4 --domain-weights uniform --sample-weighting linupper".split()
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise RuntimeError(f"two-processes failed:\n{done.stderr[-3000:]}")
        return {"printed": done.stdout, "run": summarise_run(out)}
    if name == "pipeline":
        import yaml

        config = dict(PIPELINE, train={**PIPELINE["train"], "model": "spec.json"})
        for section in ("doremi", "doge", "regmix"):
            config[section] = {**PIPELINE[section], "proxy": "spec.json"}
        Path("pipeline.yaml").write_text(yaml.safe_dump(config))
        out = Path("pipeline")
        _cli(["pipeline", "pipeline.yaml", "--out", str(out), "--no-progress"])
        weights = {p.parent.name: json.loads(p.read_text()) for p in sorted(out.glob("weights/*/domain_weights.json"))}
        report = json.loads((out / "report" / "report.json").read_text())
        markdown = (out / "report" / "report.md").read_text()
        return {"weights": weights, "runs": _runs_under(out / "runs"), "report": report, "report.md": markdown}
    raise ValueError(f"unknown case {name}")


def _needed(names: list[str]) -> list[str]:
    wanted = set(names)
    for name in names:
        wanted.update(NEEDS.get(name, []))
    return [name for name in ALL if name in wanted]


def _relative(value, root: str):
    """Paths under the run root become ROOT/..., printed durations `in Ns`: what may differ between two recordings.

    What hashes a path (a proxy spec's path in a config hash) sees it relative to the root."""
    if isinstance(value, dict):
        return {_relative(k, root): _relative(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [_relative(v, root) for v in value]
    if isinstance(value, str):
        return re.sub(r"\bin \d+(\.\d+)?s\b", "in Ns", value.replace(root, "ROOT"))
    return value


def record(root: Path, names: list[str]) -> dict:
    from mixweight.data.synthetic import write_synthetic_corpus

    root = root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    os.chdir(root)  # every path below is relative to it, so what hashes a path is the same in any root
    (root / "spec.json").write_text(json.dumps(SPEC))
    (root / "schedule.yaml").write_text(
        "- {start_step: 0, weights: {redundant: 0.3, noise: 0.1, unigram: 0.1, markov1: 0.1, markov2: 0.1, "
        "arithmetic: 0.2, copy: 0.1}}\n"
        "- {start_step: 3, weights: {redundant: 0.1, noise: 0.1, unigram: 0.3, markov1: 0.2, markov2: 0.1, "
        "arithmetic: 0.1, copy: 0.1}}\n"
    )
    write_synthetic_corpus(root / "corpus", seed=0, tokens_per_domain=4096, seq_len=64)
    os.environ.setdefault("MIXWEIGHT_CACHE", str(root / "cache"))
    summary = {}
    for name in _needed(names):
        started = time.perf_counter()
        summary[name] = run_case(name, root)
        print(f"golden case {name}: {time.perf_counter() - started:.1f}s", file=sys.stderr, flush=True)
    summary = _relative(summary, str(root))
    (root / "summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    return summary


if __name__ == "__main__":
    target = Path(sys.argv[1])
    only = sys.argv[sys.argv.index("--only") + 1].split(",") if "--only" in sys.argv else ["all"]
    only = ALL if only == ["all"] else only
    record(target, only)
    print(f"wrote {target / 'summary.json'}")
