"""Cost of loss-based sample weighting per optimizer step, measured side by side.

Times `accumulate_gradients` + optimizer step on the same model and the same fixed
batches (16 sequences per step), the arms taking turns step by step so machine noise hits
them alike, at 1, 2 and 4 micro-batches per step:
  - mean: the plain mean loss (the baseline of each micro-batch count);
  - linupper, scope step: exact over the whole step (with several micro-batches, an extra
    no-grad forward over the step's micro-batches);
  - linupper, scope micro_batch: each micro-batch weighted on its own, no extra forward;
  - linupper, step_retain (measured here only, not offered by the trainer): exact, forward
    every micro-batch with gradients and keep the graphs, weight, one backward. It holds all
    micro-batches' activations, like one micro-batch of 16 (the 1 micro-batch arms).

    python benchmarks/overhead.py [--model gpt2-tiny] [--batch-size 16] [--seq-len 128] [--steps 30] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch

from mixweight.core.distributed import World
from mixweight.core.model import build_model
from mixweight.data.manifest import load_manifest
from mixweight.data.streams import read_stream
from mixweight.data.synthetic import write_synthetic_corpus
from mixweight.train.config import TrainConfig
from mixweight.train.optim import build_optimizer
from mixweight.train.step import _forward_losses, accumulate_gradients
from mixweight.train.step_weighting import step_weighting_from_config


def step_retain(model, micro_batches, reduction, step: int) -> None:
    """Exact whole-step weights without the extra forward: all graphs kept, one backward."""
    losses = torch.cat([_forward_losses(model, mb, None) for mb in micro_batches])
    domains = torch.cat([mb["domain"] for mb in micro_batches])
    weights = reduction.weights(losses.detach(), domains, step)
    (weights * losses).sum().backward()


def one_step(model, optimizer, micro_batches, reduction, step: int, scope: str) -> float:
    """Seconds for one optimizer step: gradients (by scope) + clip + AdamW."""
    began = time.perf_counter()
    if scope == "step_retain":
        step_retain(model, micro_batches, reduction, step)
    else:
        accumulate_gradients(model, micro_batches, reduction, step, World(), scope=scope)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gpt2-tiny")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        corpus = f"{tmp}/corpus"
        write_synthetic_corpus(corpus, tokens_per_domain=32 * 1024, seq_len=args.seq_len)
        manifest = load_manifest(corpus)
        blocks = torch.cat(
            [torch.from_numpy(read_stream(manifest.stream_dir(corpus, "train", d))) for d in manifest.domains]
        )
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(blocks), generator=generator)
    n = args.batch_size
    steps = [
        {"input_ids": blocks[order[i * n : (i + 1) * n]], "domain": torch.zeros(n, dtype=torch.long)}
        for i in range(args.steps)
    ]

    def micro(m: int) -> list[dict]:  # the same samples per step, cut into m micro-batches
        return [{k: v[j * n // m : (j + 1) * n // m] for k, v in b.items()} for b in steps for j in range(m)]

    arms = {}
    for m in (1, 2, 4):
        arms[f"mean, {m} mb"] = ("none", micro(m), m, "step")
        arms[f"linupper step, {m} mb"] = ("linupper", micro(m), m, "step")
        if m > 1:
            arms[f"linupper micro_batch, {m} mb"] = ("linupper", micro(m), m, "micro_batch")
            arms[f"linupper step_retain, {m} mb"] = ("linupper", micro(m), m, "step_retain")
    # Every arm keeps its own model and optimizer; the arms take turns step by step (in a rotating
    # order), so a load change on a shared machine hits all of them within seconds of each other.
    state = {}
    for name, (weighting, _arm_batches, _accum, _scope) in arms.items():
        config = TrainConfig(data=".", out=".", sample_weighting=weighting)
        model = build_model(args.model, manifest, seed=0)
        state[name] = (model, build_optimizer(model, config), step_weighting_from_config(config))
    results: dict[str, list[float]] = {name: [] for name in arms}
    names = list(arms)
    for rep in range(args.repeats):
        for step in range(args.steps):
            turn = (rep * args.steps + step) % len(names)
            for name in names[turn:] + names[:turn]:
                _, arm_batches, accum, scope = arms[name]
                model, optimizer, reduction = state[name]
                seconds = one_step(
                    model, optimizer, arm_batches[step * accum : (step + 1) * accum], reduction, step, scope
                )
                if rep or step:  # the first step pays one-time allocation costs
                    results[name].append(seconds)
    median = {name: statistics.median(times) for name, times in results.items()}

    def paired(a: str, b: str) -> float:  # median over rounds of a's time / b's time in the same round
        return statistics.median(x / y for x, y in zip(results[a], results[b]))

    print(
        f"model {args.model}, {n} sequences x {args.seq_len} tokens per step, torch threads "
        f"{torch.get_num_threads()}, {args.repeats} repeats x {args.steps} steps, load {os.getloadavg()[0]:.1f}"
    )
    print("ratios: median over rounds of the paired ratio (both arms timed within the same round)")
    print(f"{'arm':34s} {'ms/step':>9s} {'x mean (same mb)':>17s} {'x linupper 1 mb of 16':>22s}")
    for name, seconds in median.items():
        m = name.rsplit(", ", 1)[1]
        print(
            f"{name:34s} {seconds * 1e3:9.1f} {paired(name, f'mean, {m}'):17.3f} "
            f"{paired(name, 'linupper step, 1 mb'):22.3f}"
        )


if __name__ == "__main__":
    main()
