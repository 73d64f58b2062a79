"""A compiled training step vs an eager one on the CPU, side by side in one process.

Two copies of the same model (one wrapped as `--compile` wraps it: `module.compile()`),
the same fixed batches; each iteration times one optimizer step of each (accumulate_gradients
+ clip + AdamW), alternating which goes first. The compilation itself (the first steps)
is timed separately and left out of the per-step medians.

    python benchmarks/compile_speed.py [--model gpt2-tiny] [--batch-size 16] [--seq-len 128] [--steps 30]
"""

from __future__ import annotations

import argparse
import copy
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
from mixweight.train.parallel import wrap_model
from mixweight.train.step import accumulate_gradients
from mixweight.train.step_weighting import step_weighting_from_config


def one_step(model, optimizer, batch, reduction, step: int, loss_impl: str) -> float:
    began = time.perf_counter()
    accumulate_gradients(model, [batch], reduction, step, World(), loss_impl=loss_impl)
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
    parser.add_argument("--warmup", type=int, default=3, help="steps per arm before timing (compilation)")
    parser.add_argument("--loss-impl", default="full")
    parser.add_argument("--weighting", default="linupper")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        corpus = f"{tmp}/corpus"
        write_synthetic_corpus(corpus, tokens_per_domain=32 * 1024, seq_len=args.seq_len)
        manifest = load_manifest(corpus)
        blocks = torch.cat(
            [torch.from_numpy(read_stream(manifest.stream_dir(corpus, "train", d))) for d in manifest.domains]
        )
    n = args.batch_size
    order = torch.randperm(len(blocks), generator=torch.Generator().manual_seed(0))
    batches = [
        {"input_ids": blocks[order[i * n : (i + 1) * n]], "domain": torch.zeros(n, dtype=torch.long)}
        for i in range(args.steps + args.warmup)
    ]
    config = TrainConfig(data=".", out=".", sample_weighting=args.weighting)
    eager = build_model(args.model, manifest, seed=0)
    compiled = wrap_model(copy.deepcopy(eager), World(), fsdp=False, compile=True)
    arms = {"eager": eager, "compiled": compiled}
    optimizers = {name: build_optimizer(model, config) for name, model in arms.items()}
    reduction = step_weighting_from_config(config)
    warmup = {}
    for name, model in arms.items():
        began = time.perf_counter()
        for step in range(args.warmup):
            one_step(model, optimizers[name], batches[step], reduction, step, args.loss_impl)
        warmup[name] = time.perf_counter() - began
    times: dict[str, list[float]] = {name: [] for name in arms}
    for step in range(args.warmup, args.warmup + args.steps):
        names = list(arms) if step % 2 == 0 else list(arms)[::-1]
        for name in names:
            times[name].append(one_step(arms[name], optimizers[name], batches[step], reduction, step, args.loss_impl))
    median = {name: statistics.median(t) for name, t in times.items()}
    print(
        f"model {args.model}, {n} x {args.seq_len} tokens per step, {args.weighting}, loss_impl {args.loss_impl}, "
        f"torch threads {torch.get_num_threads()}, {args.steps} timed steps per arm, load {os.getloadavg()[0]:.1f}"
    )
    for name in arms:
        print(f"{name:9s} {median[name] * 1e3:8.1f} ms/step   (first {args.warmup} steps: {warmup[name]:.1f} s)")
    print(f"compiled / eager: {median['compiled'] / median['eager']:.3f}x")


if __name__ == "__main__":
    main()
