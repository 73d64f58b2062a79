"""Cost of loss-based sample weighting per optimizer step, measured side by side.

Times `accumulate_gradients` + optimizer step on the same model and the same fixed
batches, alternating the arms so machine noise hits them alike:
  - plain mean vs LinUpper with one micro-batch per step (the weighting itself:
    a gather of N floats, min/max, a softmax);
  - plain mean vs LinUpper with gradient accumulation (the exact scheme's extra
    no-grad forward over the step's micro-batches).

    python benchmarks/overhead.py [--model gpt2-tiny] [--batch-size 16] [--seq-len 128] [--steps 30] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from mixweight.data.manifest import load_manifest
from mixweight.data.streams import read_stream
from mixweight.data.synthetic import write_synthetic_corpus
from mixweight.train.config import TrainConfig
from mixweight.train.distributed import World
from mixweight.train.model import build_model
from mixweight.train.optim import build_optimizer
from mixweight.train.reductions import reduction_from_config
from mixweight.train.step import accumulate_gradients


def time_steps(model, optimizer, batches, reduction, grad_accum: int) -> float:
    """Median seconds per optimizer step over `batches` (each step takes grad_accum micro-batches)."""
    times = []
    for start in range(0, len(batches) - grad_accum + 1, grad_accum):
        began = time.perf_counter()
        accumulate_gradients(model, batches[start : start + grad_accum], reduction, start, World())
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - began)
    return statistics.median(times[1:])  # the first step pays one-time allocation costs


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
        blocks = torch.cat([torch.from_numpy(read_stream(manifest.stream_dir(corpus, "train", d))) for d in manifest.domains])
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(blocks), generator=generator)
    n = args.batch_size
    batches = [{"input_ids": blocks[order[i * n : (i + 1) * n]], "domain": torch.zeros(n, dtype=torch.long)}
               for i in range(args.steps * 2)]
    half = [{k: v[: n // 2] for k, v in b.items()} for b in batches] + [{k: v[n // 2 :] for k, v in b.items()} for b in batches]
    arms = {
        "mean, 1 micro-batch": ("none", batches[: args.steps], 1),
        "linupper, 1 micro-batch": ("linupper", batches[: args.steps], 1),
        "mean, 2 micro-batches": ("none", half[: 2 * args.steps], 2),
        "linupper, 2 micro-batches (exact)": ("linupper", half[: 2 * args.steps], 2),
    }
    results: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(args.repeats):
        for name, (weighting, arm_batches, accum) in arms.items():
            config = TrainConfig(data=".", out=".", sample_weighting=weighting)
            model = build_model(args.model, manifest, seed=0)
            results[name].append(time_steps(model, build_optimizer(model, config), arm_batches,
                                            reduction_from_config(config), accum))
    median = {name: statistics.median(times) for name, times in results.items()}
    print(f"model {args.model}, {n} sequences x {args.seq_len} tokens per step, torch threads {torch.get_num_threads()}")
    print(f"{'arm':38s} {'ms/step':>9s}")
    for name, seconds in median.items():
        print(f"{name:38s} {seconds * 1e3:9.1f}")
    print(f"LinUpper overhead, 1 micro-batch:          {median['linupper, 1 micro-batch'] / median['mean, 1 micro-batch']:.3f}x")
    print(f"LinUpper overhead, 2 micro-batches (exact): "
          f"{median['linupper, 2 micro-batches (exact)'] / median['mean, 2 micro-batches']:.3f}x")


if __name__ == "__main__":
    main()
