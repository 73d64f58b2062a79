"""The driver: runs each part in its own process within its budget, keeps the JSON current, sums it up.

A part that fails, runs out of time or cannot run is recorded with why, and the others still run; the JSON is
rewritten (atomically) after every part, so an outer kill leaves every finished part on disk.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .features import absent_reason, present
from .flops import model_flops, peak_bf16_flops
from .plan import (
    MIN_PART_S,
    OFFLINE_ENV,
    PART_BUDGET_S,
    PARTS,
    SCHEMA,
    TRAIN_ARMS,
    WORK_MARKER,
    profile_for,
    train_config,
)

REPO = Path(__file__).resolve().parents[2]


class Interrupted(BaseException):
    """SIGTERM (an outer `timeout`): stop the running part, record what there is, write the JSON."""


def on_sigterm(signum, frame):
    raise Interrupted()


def _tail(text: str, chars: int = 1500) -> str:
    return text[-chars:].strip()


def finite_positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def _finite_or_null(value):
    """JSON has no NaN/inf: a non-finite number is written as null (the test then flags it)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_null(v) for v in value]
    return value


def run_part(argv: list[str], budget_s: float, env: dict | None = None, cwd: str | Path | None = None) -> dict:
    """Run one part's command in its own process group within `budget_s`; never raises for the part's failure.

    Returns {"status": "ok"|"failed"|"timeout", "elapsed_s", "output_tail", "error"?}; on timeout (or SIGTERM)
    the whole group is killed, so no data-loader child outlives its part."""
    started = time.perf_counter()
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd, start_new_session=True
    )
    try:
        output, _ = process.communicate(timeout=budget_s)
        status = "ok" if process.returncode == 0 else "failed"
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        status = "timeout"
    except BaseException:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    outcome = {"status": status, "elapsed_s": round(time.perf_counter() - started, 2), "output_tail": _tail(output)}
    if status == "failed":
        outcome["error"] = f"exit status {process.returncode}: {_tail(output, 600)}"
    elif status == "timeout":
        outcome["error"] = f"ran past its budget of {budget_s:.0f} s and was killed"
    return outcome


class Check:
    def __init__(self, args):
        self.args = args
        self.profile = profile_for(args)
        self.budget_scale = 10 if args.cpu else 1
        self.deadline = time.monotonic() + (args.total_budget_s or self.profile["total_budget_s"])
        self.work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="mw-device-check-"))
        self.corpus = self.work / "corpus"
        self.env = {
            **os.environ,
            **OFFLINE_ENV,
            "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
        }
        if not args.cpu and "CUDA_VISIBLE_DEVICES" not in os.environ:
            self.env["CUDA_VISIBLE_DEVICES"] = "0"  # one GPU: transformers.Trainer would take every visible one
        if args.cpu:
            self.env["CUDA_VISIBLE_DEVICES"] = ""  # the dry run stays on the CPU even on a GPU machine
        self.started = time.time()
        self.result = {
            "schema": SCHEMA,
            "mode": "cpu" if args.cpu else "gpu",
            "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started)),
            "config": {**self.profile, "vocab_size": args.vocab, "precision": args.precision},
            "flags": {},
            "parts": {},
            "summary": {},
        }

    # --- bookkeeping -----------------------------------------------------------------
    def write(self) -> None:
        self.result["wall_s"] = round(time.time() - self.started, 2)
        out = Path(self.args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = out.with_name(out.name + ".partial")
        staging.write_text(json.dumps(_finite_or_null(self.result), indent=1, allow_nan=False) + "\n")
        os.replace(staging, out)  # a reader never sees half a file

    def budget(self, part: str) -> float:
        return min(PART_BUDGET_S[part] * self.budget_scale, self.deadline - time.monotonic())

    def part(self, name: str, argv: list[str], result_file: Path | None = None) -> dict:
        budget = self.budget(name)
        if budget < MIN_PART_S:
            record = {"status": "skipped", "error": f"the total budget is spent ({budget:.0f} s left)"}
        else:
            print(f"device_check: {name} (budget {budget:.0f} s) ...", flush=True)
            try:
                record = run_part(argv, budget, env=self.env, cwd=REPO)
            except Interrupted:
                self.result["parts"][name] = {"status": "interrupted", "error": "SIGTERM while it ran"}
                raise
            record["budget_s"] = round(budget, 1)
            if record["status"] == "ok" and result_file is not None:
                record["result"] = json.loads(result_file.read_text())
            print(
                f"device_check: {name}: {record['status']} in {record['elapsed_s']} s"
                + (f" ({record['error']})" if "error" in record else ""),
                flush=True,
            )
        self.result["parts"][name] = record
        self.write()
        return record

    def unavailable(self, name: str, reason: str) -> None:
        self.result["parts"][name] = {"status": "not available", "error": reason}
        print(f"device_check: {name}: not available ({reason})", flush=True)
        self.write()

    def worker(self, name: str, kind: str, **spec) -> dict:
        run_dir = self.work / name
        shutil.rmtree(run_dir, ignore_errors=True)  # ours: a rerun with the same --work-dir starts clean
        spec = {
            "corpus": str(self.corpus),
            "run_dir": str(run_dir),
            **{k: self.profile[k] for k in ("model", "steps", "batch_size", "seq_len", "drop_steps", "warmup_steps")},
            **{k: self.profile[k] for k in ("proxy_steps", "proxy_repeats")},
            "precision": self.args.precision,
            **spec,
        }
        spec_file, result_file = self.work / f"{name}.spec.json", self.work / f"{name}.result.json"
        spec_file.write_text(json.dumps(spec))
        result_file.unlink(missing_ok=True)
        argv = [sys.executable, "-m", "benchmarks.device_check", "--worker", kind, str(spec_file), str(result_file)]
        return self.part(name, argv, result_file)

    # --- the check ---------------------------------------------------------------------
    def run(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        (self.work / WORK_MARKER).touch()  # lets a later run with this --work-dir know the contents are ours
        self.detect()

        shutil.rmtree(self.corpus, ignore_errors=True)
        synth = self.part(
            "synth",
            [
                *(sys.executable, "-m", "mixweight", "data", "synth", "--out", str(self.corpus)),
                *("--seq-len", str(self.profile["seq_len"])),
                *("--tokens-per-domain", str(self.profile["tokens_per_domain"])),
            ],
        )
        if synth["status"] != "ok":
            for name in PARTS[1:]:
                self.result["parts"][name] = {"status": "skipped", "error": "no corpus: the synth part failed"}
            return
        self.widen_vocabulary()
        self.result["model"] = model_flops(self.profile["model"], self.corpus)
        self.write()
        self.measure()

    def detect(self) -> None:
        """`flags`: which optional features this checkout's TrainConfig has (features.py asks it)."""
        try:
            self.result["flags"] = present()
        except Exception as exc:  # the code does not import: every arm runs and records why
            self.result["flags"] = {"error": f"{type(exc).__name__}: {exc}"}
        self.write()

    def measure(self) -> None:
        """Every part after synth, in order; an arm whose feature the code lacks is recorded, not run."""
        for name in PARTS[1:]:
            if name not in TRAIN_ARMS:
                self.worker(name, name)
                continue
            kind, settings = TRAIN_ARMS[name]
            reason = absent_reason(settings, self.result["flags"])
            if reason is not None:
                self.unavailable(name, reason)
            elif kind == "mixweight":
                config = train_config(self.profile, self.corpus, self.work / name, self.args.precision, settings)
                self.worker(name, kind, train_config=config, config_file=str(self.work / f"{name}.train.yaml"))
            else:
                self.worker(name, kind)

    def widen_vocabulary(self) -> None:
        """The synthetic corpus has 256 token ids; the check's models need GPT-2's vocabulary size."""
        path = self.corpus / "manifest.json"
        manifest = json.loads(path.read_text())
        manifest["vocab_size"] = self.args.vocab
        manifest["tokenizer"]["fingerprint"] = f"{manifest['tokenizer'].get('fingerprint')}-widened-{self.args.vocab}"
        path.write_text(json.dumps(manifest, indent=1))

    def summarize(self) -> None:
        parts = self.result["parts"]
        model = self.result.get("model", {})
        device_name = next(
            (
                p["result"].get("device_name")
                for p in parts.values()
                if p.get("status") == "ok" and "device_name" in p.get("result", {})
            ),
            None,
        )
        peak = peak_bf16_flops(device_name) if device_name not in (None, "cpu") else None
        table = "benchmarks/device_check/flops.py"
        self.result["device"] = {
            "name": device_name,
            "peak_bf16_flops": peak,
            "peak_note": (
                f"peak dense bf16 of {device_name} from the table in {table}"
                if peak
                else f"{device_name or 'no device'} is not in {table}'s peak-FLOPs table: MFU is null"
            ),
            **_versions(),
        }

        def ok(name):
            return parts.get(name, {}).get("result") if parts.get(name, {}).get("status") == "ok" else None

        for name in TRAIN_ARMS:
            res = ok(name)
            if res is not None:
                flops = model.get("flops_per_token")
                res["mfu"] = flops * res["tokens_per_s"] / peak if peak and flops else None

        def ratio(a, b, key):
            ra, rb = ok(a), ok(b)
            good = ra and rb and finite_positive(ra.get(key)) and finite_positive(rb.get(key))
            return ra[key] / rb[key] if good else None

        proxy = ok("proxy_steps")
        self.result["summary"] = {
            "mixweight_vs_transformers_tokens_per_s": ratio("mixweight", "transformers", "tokens_per_s"),
            "full_loss_vs_transformers_tokens_per_s": ratio("loss_full", "transformers", "tokens_per_s"),
            "linupper_overhead": ratio("mixweight", "linupper", "tokens_per_s"),  # time per step, linupper / plain
            "chunked_vs_full_peak_memory": ratio("loss_chunked", "loss_full", "peak_memory_bytes"),
            "chunked_vs_full_time": ratio("loss_full", "loss_chunked", "tokens_per_s"),
            "compile_speedup": ratio("compile", "mixweight", "tokens_per_s"),
            "doremi_vs_plain": proxy["arms"]["doremi"]["vs_plain"] if proxy else None,
            "doge_vs_plain": proxy["arms"]["doge"]["vs_plain"] if proxy else None,
            "mfu_mixweight": (ok("mixweight") or {}).get("mfu"),
            "mfu_transformers": (ok("transformers") or {}).get("mfu"),
        }
        self.write()


def _versions() -> dict:
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "cuda": torch.version.cuda}
