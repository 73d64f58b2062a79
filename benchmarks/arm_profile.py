"""Where one quickstart arm's time goes, and what threads / BLAS settings change, measured side by side.

One arm of configs/quickstart.yaml (its `train:` section merged with the arm's keys; by default `uniform`,
the quickstart's 120 steps) trains on the quickstart's synthetic corpus in a child process per measurement,
so that each variant's environment (thread counts, MKL's variables) is set before torch loads:

  - breakdown: the arm's wall and CPU time split by what the loop does (setup before the first step,
    data loading, forward+backward, clipping, AdamW, evaluation, checkpoints, metrics, the rest of the loop);
  - variants: the same arm under each setting in --variants, alternated within each repeat so that the
    load of a shared machine hits them alike; each repeat's ratio is taken against the first variant of
    that repeat, and the medians over repeats are reported with the load average around each run;
  - ops (--ops-steps N > 0): torch.profiler over N training steps of the arm, self CPU time grouped by
    kind of operator (matrix multiplies, attention, layer norm, ...).

A variant is NAME or NAME=KEY:VALUE,...; KEY is an environment variable, or `threads` (torch.set_num_threads),
`interop` (set_num_interop_threads), `onednn` (0/1, torch.backends.mkldnn.enabled) or `malloc` (`default`:
glibc's own thresholds, without the trainer's mixweight/core/allocator.py), set in the child before the arm
is built. Built in: default, threads1 (OMP_NUM_THREADS=1), onednn-off, mkl-debug (MKL_DEBUG_CPU_TYPE=5,
which MKL since 2020.1 ignores; listed because it is the old advice for AMD), glibc-malloc (malloc:default),
passive (OMP_WAIT_POLICY=PASSIVE), mkl-intel-path (a preloaded one-line library that makes MKL's vendor check
say Intel: what MKL's generic kernels cost on a non-Intel CPU; needs `cc`). A `+` joins settings of several
variants: `threads1+glibc-malloc`.

  - kernels (--kernels): per-core speed of the kernels the arm spends its time in, by CPU time on one
    thread: the arm's matrix multiplies (GFLOP/s, torch/MKL and numpy's BLAS) and tanh / exp (MKL's vector
    math in torch, numpy's own), in a child per variant.

    python benchmarks/arm_profile.py [--arm uniform] [--steps 120] [--repeats 3]
        [--variants default,threads1,onednn-off,mkl-debug] [--ops-steps 20] [--json FILE]

Run it under `nice -n 10` on a shared machine, and record `uptime` beside the numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
BUILT_IN = {
    "default": {},
    "threads1": {"OMP_NUM_THREADS": "1"},
    "onednn-off": {"onednn": "0"},
    "mkl-debug": {"MKL_DEBUG_CPU_TYPE": "5"},
    "glibc-malloc": {"malloc": "default"},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "mkl-intel-path": {"LD_PRELOAD": "<shim>"},
}
# MKL picks its kernels by CPU vendor: on a CPU that is not Intel's it runs generic ones. This one-line library,
# preloaded, answers MKL's vendor check with "Intel", so the same CPU runs MKL's AVX2/AVX-512 kernels: a
# measurement of what the vendor check costs, not a setting to train with (other kernels round differently).
MKL_SHIM = "int mkl_serv_intel_cpu_true(void) { return 1; }\n"

IN_PROCESS = ("threads", "interop", "onednn", "malloc")
# Operator name fragments per kind, first match wins (torch.profiler's aten:: names, self CPU time).
OP_KINDS = [
    ("matmul (MKL sgemm)", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear")),
    ("attention", ("scaled_dot_product", "_flash_attention", "attention")),
    ("layer norm", ("layer_norm",)),
    ("gelu / tanh", ("gelu", "tanh")),
    ("softmax / cross-entropy", ("softmax", "nll_loss", "cross_entropy")),
    ("AdamW", ("adam",)),
    ("embedding", ("embedding",)),
    ("copies / views", ("copy_", "clone", "contiguous", "to_copy", "_to_copy", "cat", "index", "view", "reshape")),
]


def build_mkl_shim(directory: Path) -> str:
    source, library = directory / "mkl_shim.c", directory / "libmkl_shim.so"
    source.write_text(MKL_SHIM)
    done = subprocess.run(["cc", "-shared", "-fPIC", "-O2", "-o", str(library), str(source)], capture_output=True)
    if done.returncode != 0:
        raise SystemExit(f"arm_profile: variant mkl-intel-path needs a C compiler (cc): {done.stderr[-500:]!r}")
    return str(library)


def parse_variant(text: str, work: Path) -> tuple[str, dict]:
    name, _, settings = text.partition("=")
    if settings:
        return name, dict(item.split(":", 1) for item in settings.split(","))
    merged = {}
    for part in name.split("+"):
        if part not in BUILT_IN:
            raise SystemExit(f"arm_profile: unknown variant '{part}'; built in: {sorted(BUILT_IN)} (or NAME=KEY:VALUE)")
        merged.update(BUILT_IN[part])
    if merged.get("LD_PRELOAD") == "<shim>":
        merged["LD_PRELOAD"] = build_mkl_shim(work)
    return name, merged


# --- the child: one arm, timed ------------------------------------------------------------------------------


class Clock:
    """Wall and CPU seconds per category; a category entered inside another is not counted twice."""

    def __init__(self):
        self.wall, self.cpu, self.calls = defaultdict(float), defaultdict(float), defaultdict(int)
        self.depth = 0

    def wrap(self, owner, attribute: str, category: str) -> None:
        inner = getattr(owner, attribute)

        def timed(*args, **kwargs):
            if self.depth:
                return inner(*args, **kwargs)
            self.depth += 1
            wall, cpu = time.perf_counter(), time.process_time()
            try:
                return inner(*args, **kwargs)
            finally:
                self.wall[category] += time.perf_counter() - wall
                self.cpu[category] += time.process_time() - cpu
                self.calls[category] += 1
                self.depth -= 1

        setattr(owner, attribute, timed)


def arm_config(arm: str, corpus: str, out: str, steps: int):
    from mixweight.pipeline import load_pipeline_config

    config = load_pipeline_config(QUICKSTART)
    if arm not in config.arms:
        raise SystemExit(f"arm_profile: no arm '{arm}' in {QUICKSTART}; arms: {sorted(config.arms)}")
    train = config.arm_config(arm)
    if train.domain_weights not in ("uniform", "natural") and not str(train.domain_weights).startswith("online:odm"):
        raise SystemExit(f"arm_profile: arm '{arm}' needs a weights stage; choose uniform, linupper, odm, ...")
    fields = {"data": corpus, "out": out, "seed": 0, "progress": False}
    if steps:
        fields["steps"] = steps
    return dataclasses.replace(train, **fields)


def write_corpus(directory: Path) -> str:
    from mixweight.data.synthetic import write_synthetic_corpus
    from mixweight.pipeline import load_pipeline_config

    synthetic = load_pipeline_config(QUICKSTART).data["synthetic"]
    corpus = directory / "corpus"
    if not (corpus / "manifest.json").is_file():
        write_synthetic_corpus(corpus, **synthetic)
    return str(corpus)


def apply_in_process(settings: dict) -> None:
    import torch

    from mixweight.core import allocator

    if "threads" in settings:
        torch.set_num_threads(int(settings["threads"]))
    if "interop" in settings:
        torch.set_num_interop_threads(int(settings["interop"]))
    if "onednn" in settings:
        torch.backends.mkldnn.enabled = settings["onednn"] == "1"
    if settings.get("malloc") == "default":  # glibc's own thresholds: the trainer's keep_freed_memory is skipped
        allocator._applied = False


def child_breakdown(args, settings: dict) -> dict:
    import torch

    import mixweight.train.loop as loop
    from mixweight.sampling.mixture import DomainMixture
    from mixweight.train.metrics import MetricsLog
    from mixweight.train.objective import WeightedLoss

    apply_in_process(settings)
    clock = Clock()
    clock.wrap(DomainMixture, "next_batch", "data")
    clock.wrap(WeightedLoss, "compute_gradients", "forward+backward")
    clock.wrap(torch.nn.utils, "clip_grad_norm_", "clip")
    clock.wrap(torch.optim.AdamW, "step", "AdamW")
    clock.wrap(loop, "evaluate_domains", "evaluation")
    for name in ("full_model_state", "full_optimizer_state"):
        clock.wrap(loop, name, "checkpoint")
    clock.wrap(loop.ckpt, "save_checkpoint", "checkpoint")
    clock.wrap(loop, "_step_record", "metrics")
    clock.wrap(MetricsLog, "write", "metrics")
    first_batch = {}
    next_batch = DomainMixture.next_batch

    def first(self, step):
        first_batch.setdefault("wall", time.perf_counter())
        first_batch.setdefault("cpu", time.process_time())
        return next_batch(self, step)

    DomainMixture.next_batch = first
    config = arm_config(args.arm, args.corpus, args.out, args.steps)
    wall, cpu = time.perf_counter(), time.process_time()
    loop.train(config)
    parts = {k: {"wall": clock.wall[k], "cpu": clock.cpu[k], "calls": clock.calls[k]} for k in clock.wall}
    parts["setup"] = {"wall": first_batch["wall"] - wall, "cpu": first_batch["cpu"] - cpu, "calls": 1}
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "total": {"wall": wall, "cpu": cpu},
        "parts": parts,
        "rest": {
            "wall": wall - sum(p["wall"] for p in parts.values()),
            "cpu": cpu - sum(p["cpu"] for p in parts.values()),
        },
        "threads": torch.get_num_threads(),
        "interop": torch.get_num_interop_threads(),
        "steps": config.steps,
    }


def child_ops(args, settings: dict) -> dict:
    from torch.profiler import ProfilerActivity, profile, schedule

    import mixweight.train.loop as loop
    from mixweight.sampling.mixture import DomainMixture

    apply_in_process(settings)
    warm = 5
    plan = schedule(wait=warm, warmup=2, active=args.ops_steps, repeat=1)
    with profile(activities=[ProfilerActivity.CPU], schedule=plan) as prof:
        next_batch = DomainMixture.next_batch

        def stepping(self, step):
            prof.step()
            return next_batch(self, step)

        DomainMixture.next_batch = stepping
        config = arm_config(args.arm, args.corpus, args.out, warm + 2 + args.ops_steps + 1)
        loop.train(dataclasses.replace(config, eval_every=0, checkpoint_every=10**9))
    kinds, total = defaultdict(float), 0.0
    top = []
    for event in prof.key_averages():
        self_us = event.self_cpu_time_total
        total += self_us
        kind = next((k for k, names in OP_KINDS if any(n in event.key.lower() for n in names)), "other")
        kinds[kind] += self_us
        top.append((self_us, event.key, event.count))
    top.sort(reverse=True)
    per_step = {k: v / args.ops_steps / 1e3 for k, v in kinds.items()}
    return {
        "ms_per_step": per_step,
        "total_ms_per_step": total / args.ops_steps / 1e3,
        "top": [{"op": k, "self_ms_per_step": us / args.ops_steps / 1e3, "calls": c} for us, k, c in top[:15]],
    }


def child_kernels(args, settings: dict) -> dict:
    """Per-core speed (CPU time, one thread) of the arm's matrix multiplies and of tanh / exp."""
    import numpy as np
    import torch

    torch.set_num_threads(1)

    def seconds(fn, repeats: int = 20) -> float:
        fn()
        runs = []
        for _ in range(5):
            began = time.process_time()
            for _ in range(repeats):
                fn()
            runs.append((time.process_time() - began) / repeats)
        return statistics.median(runs)

    tokens, width = 16 * 128, 192  # gpt2-tiny at the quickstart's batch: [tokens, d] x [d, 3d], [d, 4d], [4d, d]
    gemm = {}
    for k, n in ((width, 3 * width), (width, 4 * width), (4 * width, width)):
        a, b = torch.randn(tokens, k), torch.randn(k, n)
        a_np, b_np = a.numpy(), b.numpy()
        flops = 2 * tokens * k * n
        gemm[f"{tokens}x{k}x{n}"] = {
            "torch": flops / seconds(lambda a=a, b=b: torch.mm(a, b)) / 1e9,
            "numpy": flops / seconds(lambda a=a_np, b=b_np: a @ b) / 1e9,
        }
    x = torch.randn(tokens, 4 * width)  # the MLP activation GELU's tanh runs on
    x_np = x.numpy()
    unary = {}
    for name in ("tanh", "exp"):
        torch_fn, numpy_fn = getattr(torch, name), getattr(np, name)
        unary[name] = {
            "torch_ms": seconds(lambda f=torch_fn: f(x)) * 1e3,
            "numpy_ms": seconds(lambda f=numpy_fn: f(x_np)) * 1e3,
        }
    return {"gemm_gflops": gemm, "unary": unary}


# --- the parent: children alternated, ratios ------------------------------------------------------------------


def run_child(mode: str, name: str, settings: dict, args, work: Path, tag: str) -> dict:
    env = {**os.environ, **{k: v for k, v in settings.items() if k not in IN_PROCESS}}
    out = work / f"run-{tag}"
    command = [sys.executable, __file__, "--child", mode, "--variant", f"{name}={_encode(settings)}"]
    command += ["--arm", args.arm, "--steps", str(args.steps), "--ops-steps", str(args.ops_steps)]
    command += ["--corpus", args.corpus, "--out", str(out)]
    load_before = os.getloadavg()[0]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"arm_profile: child {name} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["load"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    return result


def _encode(settings: dict) -> str:
    return ",".join(f"{k}:{v}" for k, v in settings.items()) or "none:none"


def print_breakdown(name: str, runs: list[dict]) -> None:
    steps = runs[0]["steps"]
    categories = sorted(
        {k for r in runs for k in r["parts"]}, key=lambda k: -runs[0]["parts"].get(k, {}).get("wall", 0)
    )
    total_wall = statistics.median(r["total"]["wall"] for r in runs)
    total_cpu = statistics.median(r["total"]["cpu"] for r in runs)
    print(f"\n{name}: {steps} steps, threads {runs[0]['threads']} intra / {runs[0]['interop']} inter-op")
    print("| part | calls | wall s (median) | share of wall | CPU s (median) | share of CPU |")
    print("|---|---|---|---|---|---|")
    for key in categories:
        wall = statistics.median(r["parts"].get(key, {}).get("wall", 0.0) for r in runs)
        cpu = statistics.median(r["parts"].get(key, {}).get("cpu", 0.0) for r in runs)
        calls = runs[0]["parts"].get(key, {}).get("calls", 0)
        print(f"| {key} | {calls} | {wall:.2f} | {wall / total_wall:.1%} | {cpu:.2f} | {cpu / total_cpu:.1%} |")
    rest_wall = statistics.median(r["rest"]["wall"] for r in runs)
    rest_cpu = statistics.median(r["rest"]["cpu"] for r in runs)
    print(
        f"| rest of the loop | | {rest_wall:.2f} | {rest_wall / total_wall:.1%} | {rest_cpu:.2f} | "
        f"{rest_cpu / total_cpu:.1%} |"
    )
    print(f"| **total** | | **{total_wall:.2f}** | | **{total_cpu:.2f}** | |")


def print_variants(variants, runs, base: str, repeats: int) -> None:
    print(f"\nvariants against {base} (median over {repeats} repeats of the per-repeat ratio)")
    print("| variant | wall s (median) | wall ratio | CPU s (median) | CPU ratio | load before-after |")
    print("|---|---|---|---|---|---|")
    for name, _ in variants:
        wall = statistics.median(r["total"]["wall"] for r in runs[name])
        cpu = statistics.median(r["total"]["cpu"] for r in runs[name])
        ratio = statistics.median(a["total"]["wall"] / b["total"]["wall"] for a, b in zip(runs[name], runs[base]))
        cpu_ratio = statistics.median(a["total"]["cpu"] / b["total"]["cpu"] for a, b in zip(runs[name], runs[base]))
        loads = ", ".join(f"{r['load'][0]}-{r['load'][1]}" for r in runs[name])
        print(f"| {name} | {wall:.1f} | {ratio:.2f} | {cpu:.1f} | {cpu_ratio:.2f} | {loads} |")


def print_kernels(kernels: dict) -> None:
    print("\nkernels per core (one thread, CPU time; matrix multiplies in GFLOP/s, tanh / exp in ms)")
    names = list(kernels)
    shapes = list(kernels[names[0]]["gemm_gflops"])
    print(
        "| variant | "
        + " | ".join(f"mm {s} torch / numpy" for s in shapes)
        + " | tanh torch / numpy | exp torch / numpy |"
    )
    print("|---" * (len(shapes) + 3) + "|")
    for name in names:
        gemm, unary = kernels[name]["gemm_gflops"], kernels[name]["unary"]
        cells = [f"{gemm[s]['torch']:.0f} / {gemm[s]['numpy']:.0f}" for s in shapes]
        cells += [f"{unary[f]['torch_ms']:.2f} / {unary[f]['numpy_ms']:.2f}" for f in ("tanh", "exp")]
        print(f"| {name} | " + " | ".join(cells) + " |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arm", default="uniform")
    parser.add_argument("--steps", type=int, default=0, help="steps per run (default: the quickstart's)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", default="default,threads1,onednn-off,mkl-debug")
    parser.add_argument("--ops-steps", type=int, default=20, help="steps under torch.profiler (0: no op profile)")
    parser.add_argument("--kernels", action="store_true", help="also time the arm's kernels per core, per variant")
    parser.add_argument("--no-arm", action="store_true", help="skip the arm runs (with --kernels: kernels only)")
    parser.add_argument("--json", help="write every measurement here")
    parser.add_argument("--child", choices=["breakdown", "ops", "kernels"], help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        name, _, encoded = args.variant.partition("=")
        settings = {k: v for k, v in (i.split(":", 1) for i in encoded.split(",")) if k != "none"}
        child = {"breakdown": child_breakdown, "ops": child_ops, "kernels": child_kernels}[args.child]
        print(json.dumps(child(args, settings)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        variants = [parse_variant(v, work) for v in args.variants.split(",")]
        args.corpus = write_corpus(work)
        kernels = {}
        for name, settings in variants if args.kernels else []:
            kernels[name] = run_child("kernels", name, settings, args, work, f"kernels-{name}")
        runs = defaultdict(list)
        for repeat in range(0 if args.no_arm else args.repeats):
            order = variants if repeat % 2 == 0 else variants[::-1]  # alternate which variant goes first
            for name, settings in order:
                result = run_child("breakdown", name, settings, args, work, f"{name}-{repeat}")
                runs[name].append(result)
                print(
                    f"repeat {repeat} {name}: wall {result['total']['wall']:.1f} s, "
                    f"CPU {result['total']['cpu']:.1f} s, load {result['load']}",
                    flush=True,
                )
        ops = run_child("ops", *variants[0], args, work, "ops") if args.ops_steps and not args.no_arm else None

    base = variants[0][0]
    if kernels:
        print_kernels(kernels)
    if runs:
        print_variants(variants, runs, base, args.repeats)
        for name, _ in variants:
            print_breakdown(name, runs[name])
    if ops:
        print(f"\noperators over {args.ops_steps} steps of {base} (torch.profiler, self CPU time per step)")
        print("| kind | ms per step | share |")
        print("|---|---|---|")
        for kind, ms in sorted(ops["ms_per_step"].items(), key=lambda kv: -kv[1]):
            print(f"| {kind} | {ms:.1f} | {ms / ops['total_ms_per_step']:.1%} |")
        print("top operators: " + "; ".join(f"{t['op']} {t['self_ms_per_step']:.1f} ms" for t in ops["top"][:8]))
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": runs, "ops": ops, "kernels": kernels}, indent=1))


if __name__ == "__main__":
    main()
