"""Online domain mixing's cost per phase (dataset rebuild + mixer update) as a fraction of training time.

    .venv/bin/python benchmarks/online_mixing.py --model gpt2-tiny --batch-size 16 --seq-len 128 \
        --steps 100 --run-every 10 --every 10,50,200 --repeats 2

One process, the CPU, fp32. A static run (uniform weights) and an online:odm run re-choosing its mixture
every `--run-every` steps alternate `--repeats` times over the same synthetic corpus, so the numbers
compared are measured side by side. Instrumented by wrapping, not by changing the trainer:

- step period: wall time between the first `next_batch` of consecutive steps (everything a step costs),
  median over the steps that start no phase (static run);
- rebuild: the extra time of a `next_batch` call that entered a new phase (close the old streaming
  dataset, build the new one, its first batch) over the median call that did not (online run);
- update: `observe` per step and `OnlineMixer.start_phase` per phase (online run).

A phase's cost does not depend on K, so for every K of `--every` the fraction of training time is
(rebuild + K x observe + start_phase) / (K x step period), each term from the same online run (median
over repeats). Also printed per repeat: the online run's whole loop wall time over the static run's
just before it (end to end; on a shared machine the load moves it more than the phases do).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mixweight.data.synthetic import write_synthetic_corpus
from mixweight.sampling.mixture import DomainMixture
from mixweight.sampling.schedule import phase_at
from mixweight.train import mixers, odm, online_doremi
from mixweight.train.config import TrainConfig
from mixweight.train.loop import train

TIMES: dict[str, list] = {}


def _instrument() -> None:
    """Wrap the mixture's next_batch and the mixer's calls with timers (recorded into TIMES)."""
    real_next = DomainMixture.next_batch

    def next_batch(self, step):
        entering = self._loader is None or self.phase != phase_at(self.phases, step)
        started = time.perf_counter()
        batch = real_next(self, step)
        TIMES.setdefault("next_batch", []).append((step, started, time.perf_counter() - started, entering))
        return batch

    DomainMixture.next_batch = next_batch
    for name in ("observe", "start_phase"):
        real = getattr(mixers.OnlineMixer, name)

        def timed(self, *args, _real=real, _name=name):
            started = time.perf_counter()
            out = _real(self, *args)
            TIMES.setdefault(_name, []).append(time.perf_counter() - started)
            return out

        setattr(mixers.OnlineMixer, name, timed)
    for cls in (odm.ODMMixer, online_doremi.DoReMiMixer):  # the subclasses define their own observe
        real = cls.observe

        def timed_observe(self, *args, _real=real):
            started = time.perf_counter()
            out = _real(self, *args)
            TIMES.setdefault("observe", []).append(time.perf_counter() - started)
            return out

        cls.observe = timed_observe


def _run(corpus: str, out: Path, args, every: int | None) -> dict:
    TIMES.clear()
    extra = {"domain_weights": "uniform"}
    if every is not None:
        extra = {"domain_weights": "online:odm", "mixing": {"every": every, "odm": {"exploration": 0.05}}}
    config = TrainConfig(
        data=corpus,
        out=str(out),
        model=args.model,
        steps=args.steps,
        batch_size=args.batch_size,
        warmup_steps=10,
        eval_every=0,
        eval_blocks=2,
        checkpoint_every=10**9,
        log_every=10,
        progress=False,
        **extra,
    )
    config.validate()
    started = time.perf_counter()
    train(config)
    total = time.perf_counter() - started
    calls = TIMES["next_batch"]
    firsts = [c for i, c in enumerate(calls) if i == 0 or calls[i - 1][0] != c[0]]  # first micro-batch of a step
    periods = [b[1] - a[1] for a, b in zip(firsts, firsts[1:]) if not b[3] and not a[3]]
    plain = statistics.median(c[2] for c in calls if not c[3])
    rebuilds = [c[2] - plain for c in calls[1:] if c[3]]  # the run's first batch is paid by static runs too
    return {
        "total_s": total,
        "step_s": statistics.median(periods[5:]),
        "rebuild_s": statistics.median(rebuilds) if rebuilds else 0.0,
        "observe_s": statistics.median(TIMES["observe"]) if "observe" in TIMES else 0.0,
        "start_phase_s": statistics.median(TIMES["start_phase"]) if "start_phase" in TIMES else 0.0,
        "phases": 1 + len(rebuilds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gpt2-tiny")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--tokens-per-domain", type=int, default=200_000)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--run-every", type=int, default=10)
    parser.add_argument("--every", default="10,50,200")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    _instrument()
    results: dict[str, list[dict]] = {"static": [], "online": []}
    with tempfile.TemporaryDirectory() as tmp:
        corpus = str(Path(tmp) / "corpus")
        write_synthetic_corpus(corpus, seed=0, tokens_per_domain=args.tokens_per_domain, seq_len=args.seq_len)
        load = os.getloadavg()
        for repeat in range(args.repeats):
            for name, k in (("static", None), ("online", args.run_every)):
                results[name].append(_run(corpus, Path(tmp) / f"run-{name}-{repeat}", args, k))
                print(name, repeat, json.dumps(results[name][-1]), flush=True)
        load_end = os.getloadavg()
    print(f"\nload average (1, 5, 15 min) at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; at the end: "
          f"{load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f}; cpu count {os.cpu_count()}")  # fmt: skip
    for repeat, (fixed, moving) in enumerate(zip(results["static"], results["online"])):
        print(
            f"repeat {repeat}: step period {1e3 * moving['step_s']:.1f} ms (online run, in-phase steps; static run "
            f"{1e3 * fixed['step_s']:.1f} ms); rebuild {1e3 * moving['rebuild_s']:.1f} ms (median of "
            f"{moving['phases'] - 1} phase changes); observe {1e3 * moving['observe_s']:.3f} ms/step; start_phase "
            f"{1e3 * moving['start_phase_s']:.3f} ms/phase; whole loop online (K={args.run_every}) / static: "
            f"{moving['total_s'] / fixed['total_s']:.3f} (end to end, load-sensitive)"
        )
    # Each repeat's fraction from its own online run: rebuild, update and step period measured side by side.
    print("| K | phase cost (ms) | K steps (ms) | fraction of training time (median over repeats) |")
    print("|---|---|---|---|")
    for k in (int(v) for v in args.every.split(",")):
        costs = [r["rebuild_s"] + k * r["observe_s"] + r["start_phase_s"] for r in results["online"]]
        spans = [k * r["step_s"] for r in results["online"]]
        fraction = statistics.median(c / t for c, t in zip(costs, spans))
        print(
            f"| {k} | {1e3 * statistics.median(costs):.1f} | {1e3 * statistics.median(spans):.0f} | "
            f"{100 * fraction:.2f}% |"
        )


if __name__ == "__main__":
    main()
