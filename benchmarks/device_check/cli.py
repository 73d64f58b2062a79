"""The command line: `python -m benchmarks.device_check [--cpu] [--out JSON] ...` (device_check.sh wraps it).

Refuses (exit 2, one line) an --out or --work-dir it did not make; SIGTERM records what there is and exits 143.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
from pathlib import Path

from . import __doc__ as OVERVIEW
from .driver import Check, Interrupted, on_sigterm
from .measure import run_worker
from .plan import OFFLINE_ENV, SCHEMA, WORK_MARKER, profile_for
from .report import markdown

BENCH_DIR = Path(__file__).resolve().parents[1]


def parser() -> argparse.ArgumentParser:
    made = argparse.ArgumentParser(
        prog="python -m benchmarks.device_check",
        description=OVERVIEW.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=OVERVIEW,
    )
    made.add_argument("--cpu", action="store_true", help="dry run: tiny sizes on the CPU (every part, seconds)")
    made.add_argument("--out", default=str(BENCH_DIR / "device_check.json"), help="the JSON to write")
    made.add_argument("--markdown", default=None, help="also write the tables to this file")
    made.add_argument(
        "--work-dir", default=None, help="corpus and run directories (default: a new temp dir, removed at the end)"
    )
    made.add_argument("--model", default=None, help="model spec (default: gpt2-mini; --cpu: gpt2-micro)")
    made.add_argument("--steps", type=int, default=None)
    made.add_argument("--batch-size", type=int, default=None)
    made.add_argument("--seq-len", type=int, default=None)
    made.add_argument("--vocab", type=int, default=50257, help="vocabulary size of the models (GPT-2's)")
    made.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    made.add_argument(
        "--total-budget-s", type=float, default=None, help="seconds for the whole check (default: 450 on a GPU)"
    )
    made.add_argument("--worker", nargs=3, metavar=("KIND", "SPEC", "RESULT"), help=argparse.SUPPRESS)
    return made


def refuse_paths(args) -> str | None:
    """The check deletes and overwrites only what it made: a foreign --out or --work-dir is refused."""
    out = Path(args.out)
    if out.exists():
        try:
            ours = json.loads(out.read_text()).get("schema") == SCHEMA
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours:
            return f"--out {out} exists and is not a device check JSON ({SCHEMA}); choose another path"
    if args.work_dir:
        work = Path(args.work_dir)
        if work.exists() and (not work.is_dir() or (any(work.iterdir()) and not (work / WORK_MARKER).exists())):
            return f"--work-dir {work} holds files this check did not make; give a new or empty directory"
    return None


def main(argv: list[str] | None = None) -> None:
    command = parser()
    args = command.parse_args(argv)
    os.environ.update(OFFLINE_ENV)
    if args.worker:
        run_worker(*args.worker)
        return

    refusal = refuse_paths(args)
    if refusal:
        command.exit(2, f"device_check: error: {refusal}\n")
    profile = profile_for(args)
    if profile["steps"] <= profile["drop_steps"] + 1:  # checked before anything is made
        command.error(f"--steps must exceed {profile['drop_steps'] + 1} (the dropped steps + 1)")
    check = Check(args)
    signal.signal(signal.SIGTERM, on_sigterm)
    interrupted = False
    try:
        check.run()
    except Interrupted:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second TERM must not cut the record short
        interrupted = True
        check.result["interrupted"] = "SIGTERM (outer timeout): the parts not recorded did not run"
    finally:
        check.summarize()
        if args.work_dir is None:
            shutil.rmtree(check.work, ignore_errors=True)  # the temp dir this run made
    table = markdown(check.result)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    print(f"device_check: wrote {args.out}", flush=True)
    if interrupted:
        sys.exit(143)
