"""Run under torchrun by scaling.py: times a full LinUpper step and the statistics exchange alone."""

import json
import statistics
import sys
import time

import torch

from mixweight.core.distributed import all_gather_cat, close_world, init_world
from mixweight.core.model import build_model
from mixweight.data.manifest import load_manifest
from mixweight.data.streams import read_stream
from mixweight.train.step import accumulate_gradients
from mixweight.train.step_weighting import SampleWeightingStep
from mixweight.weighting import SampleWeighting


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append((time.perf_counter() - began) * 1e3)
    return statistics.median(times[2:])


def main() -> None:
    corpus, spec, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
    world = init_world()
    manifest = load_manifest(corpus)
    blocks = torch.from_numpy(read_stream(manifest.stream_dir(corpus, "train", manifest.domains[0]), limit=batch))
    micro = {"input_ids": blocks, "domain": torch.zeros(batch, dtype=torch.long)}
    model = torch.nn.parallel.DistributedDataParallel(build_model(spec, manifest, seed=0))
    reduction = SampleWeightingStep(SampleWeighting("linupper", 0.4))

    def step():
        accumulate_gradients(model, [micro], reduction, 0, world)
        model.zero_grad(set_to_none=True)

    losses, domains = torch.rand(batch), torch.zeros(batch, dtype=torch.long)

    def exchange():  # what the weighting adds to DDP's own traffic: the step's losses and domain ids
        all_gather_cat(losses, world)
        all_gather_cat(domains, world)

    result = {"step_ms": median_ms(step, 12), "exchange_ms": median_ms(exchange, 200)}
    if world.is_main:
        print(json.dumps(result))
    close_world(world)


if __name__ == "__main__":
    main()
