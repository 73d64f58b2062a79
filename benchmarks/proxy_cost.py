"""Cost of one proxy step of DoReMi and of DoGE relative to a plain training step.

Same model spec, same init, same fixed batches (every domain sampled uniformly, each
sample carrying its domain id), timed through the objects the trainer uses
(`StepObjective.compute_gradients` + clip + AdamW step), arms alternated within every
repeat so machine noise hits them alike (the load average is printed per repeat):
  - plain:  `WeightedLoss(MeanWeighting())`, the ordinary mean-loss step;
  - DoReMi: `WeightedLoss(DoReMiWeighting(reference, ...))`: the proxy step plus a no-grad
    forward of a same-size reference model (the excess-loss signal) and the alpha update;
  - DoGE:   `DoGEObjective` as `weights doge` runs it by default (held-out mix target,
    per-domain gradients clipped at 5.0), in both forms: `ghost` (the default: one forward and
    one backward, split by domain at every layer) and `loop` (one forward + backward per domain
    and for the mixture's blocks); k + 1 gradient rows, clipping, scores, alpha update, the
    mixed gradient written back.
  - DoGE vs the number of domains (--domain-counts): the same blocks relabelled into k
    domains uniformly at random (the cost depends on the labels only through the per-domain
    split), both forms.

    python benchmarks/proxy_cost.py [--model gpt2-tiny] [--batch-size 16] [--seq-len 128] [--steps 6] [--repeats 3]
                                    [--domain-counts 4,8,16]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch

from mixweight.core.distributed import World
from mixweight.core.model import build_model, count_parameters
from mixweight.data.manifest import load_manifest
from mixweight.data.streams import read_stream
from mixweight.data.synthetic import write_synthetic_corpus
from mixweight.domain.doge import DoGEObjective, published_defaults
from mixweight.domain.doremi import DoReMiWeighting
from mixweight.train.config import TrainConfig
from mixweight.train.objective import WeightedLoss
from mixweight.train.optim import build_optimizer
from mixweight.train.step import MeanWeighting


def time_steps(model, optimizer, batches, objective) -> float:
    """Median seconds per optimizer step (one micro-batch per step), the first step left out."""
    times = []
    for step, batch in enumerate(batches):
        began = time.perf_counter()
        objective.compute_gradients(model, [batch], step, World(), None, 1e-3)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - began)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gpt2-tiny")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--domain-counts", default="4,8,16", help="DoGE cost vs k: comma-separated domain counts")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        corpus = f"{tmp}/corpus"
        write_synthetic_corpus(corpus, tokens_per_domain=16 * 1024, seq_len=args.seq_len)
        manifest = load_manifest(corpus)
        per_domain = [torch.from_numpy(read_stream(manifest.stream_dir(corpus, "train", d))) for d in manifest.domains]
    k = len(manifest.domains)
    generator = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(args.steps):
        domains = torch.randint(k, (args.batch_size,), generator=generator)  # uniform over domains, as a proxy samples
        rows = [per_domain[d][torch.randint(len(per_domain[d]), (1,), generator=generator)].squeeze(0) for d in domains]
        batches.append({"input_ids": torch.stack(rows), "domain": domains})

    def relabelled(n: int) -> list[dict]:
        """The same blocks in n domains, uniformly at random (the mixture's blocks stay 1 in n + 1)."""
        g = torch.Generator().manual_seed(n)
        return [
            {"input_ids": b["input_ids"], "domain": torch.randint(n, (args.batch_size,), generator=g)} for b in batches
        ]

    def doge(names: list[str], impl: str):
        # what `weights doge` runs by default: the held-out mix target, clipped per-domain gradients
        return lambda: DoGEObjective(names, "mix", score="reference", impl=impl, **published_defaults("mix"))

    config = TrainConfig(data=".", out=".")
    reference = build_model(args.model, manifest, seed=1)
    counts = [int(n) for n in args.domain_counts.split(",") if n.strip()]
    arms = {  # name -> (objective factory, batches)
        "plain step": (lambda: WeightedLoss(MeanWeighting()), batches),
        "DoReMi proxy step": (lambda: WeightedLoss(DoReMiWeighting(reference, manifest.domains)), batches),
        f"DoGE loop, {k} domains": (doge(manifest.domains, "loop"), batches),
        f"DoGE ghost, {k} domains": (doge(manifest.domains, "ghost"), batches),
    }
    for n in counts:
        names = [f"d{i:02d}" for i in range(n)]
        arms[f"DoGE ghost, {n} domains (relabelled)"] = (doge(names, "ghost"), relabelled(n))
        arms[f"DoGE loop, {n} domains (relabelled)"] = (doge(names, "loop"), relabelled(n))
    results: dict[str, list[float]] = {name: [] for name in arms}
    loads = []
    for _ in range(args.repeats):
        loads.append(os.getloadavg()[0])
        for name, (make, arm_batches) in arms.items():
            model = build_model(args.model, manifest, seed=0)
            results[name].append(time_steps(model, build_optimizer(model, config), arm_batches, make()))
    loads.append(os.getloadavg()[0])
    median = {name: statistics.median(times) for name, times in results.items()}
    plain = median["plain step"]
    print(
        f"model {args.model} ({count_parameters(reference) / 1e6:.2f}M parameters), {k} domains, "
        f"{args.batch_size} sequences x {args.seq_len} tokens per step, torch threads {torch.get_num_threads()}, "
        f"{args.repeats} repeats x {args.steps - 1} timed steps, "
        f"load average (1 min) at each repeat's start and at the end: {', '.join(f'{v:.1f}' for v in loads)}"
    )
    print("| arm | ms/step (median) | spread over repeats (ms) | vs plain |")
    print("|---|---|---|---|")
    for name, seconds in median.items():
        spread = f"{min(results[name]) * 1e3:.1f}-{max(results[name]) * 1e3:.1f}"
        print(f"| {name} | {seconds * 1e3:.1f} | {spread} | {seconds / plain:.2f}x |")
    for impl in ("ghost", "loop"):
        costs = [median[f"DoGE {impl}, {n} domains (relabelled)"] for n in counts]
        if costs:
            print(f"DoGE {impl}: largest / smallest cost over {counts} domains: {max(costs) / min(costs):.2f}x")


if __name__ == "__main__":
    main()
