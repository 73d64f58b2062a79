"""The worker of each measuring part, run in its own process: `python -m benchmarks.device_check --worker
KIND SPEC RESULT` reads the driver's spec (JSON) and writes the part's result (JSON).

Kinds: mixweight (`mixweight train --config`, its arm's YAML), transformers (transformers.Trainer on the
same model and data), proxy_steps (benchmarks/proxy_cost.py's plain, DoReMi and DoGE steps).
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parents[1]


def _device():
    import torch

    return torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu")


def peak_memory() -> dict:
    import torch

    if torch.cuda.is_available():
        return {
            "peak_memory_bytes": int(torch.cuda.max_memory_allocated()),
            "peak_memory_kind": "cuda_max_allocated",
            "device_name": torch.cuda.get_device_name(0),
        }
    # ru_maxrss is in KiB on Linux: the whole process, model and Python included.
    return {
        "peak_memory_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "peak_memory_kind": "cpu_max_rss",
        "device_name": "cpu",
    }


def _reset_peak() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def worker_mixweight(spec: dict) -> dict:
    """`mixweight train --config` through its CLI entry point, in this process (so its peak memory is ours)."""
    import yaml

    from mixweight.cli import main as mixweight_main

    steps = spec["steps"]
    Path(spec["config_file"]).write_text(yaml.safe_dump(spec["train_config"], sort_keys=False))
    argv = ["train", "--config", spec["config_file"]]
    _reset_peak()
    started = time.perf_counter()
    mixweight_main(argv)
    wall = time.perf_counter() - started
    records = [json.loads(line) for line in (Path(spec["run_dir"]) / "metrics.jsonl").read_text().splitlines() if line]
    per_step = {r["step"]: r["time"]["tokens_per_s"] for r in records if "time" in r}
    if sorted(per_step) != list(range(1, steps + 1)):
        raise RuntimeError(f"metrics.jsonl has step records {sorted(per_step)[:5]}..., expected 1..{steps}")
    tokens_per_step = spec["batch_size"] * spec["seq_len"]
    timed = [per_step[s] for s in range(spec["drop_steps"] + 1, steps + 1)]
    last = [r for r in records if "time" in r][-1]
    return {
        "tokens_per_s": statistics.median(timed),
        "first_step_s": tokens_per_step / per_step[1],
        "timed_steps": len(timed),
        "wall_s": wall,
        "loss": last["loss"],
        "loss_kind": "last step",
        "argv": ["mixweight", *argv],
        "train_config": spec["train_config"],
        **peak_memory(),
    }


def worker_transformers(spec: dict) -> dict:
    """transformers.Trainer with throughput.py's dataset/collator/Trainer, on the device, in spec's precision."""
    import numpy as np
    import torch
    import transformers
    from transformers import TrainerCallback

    sys.path.insert(0, str(BENCH_DIR))
    from throughput import BlockDataset, DomainTrainer, collate, matched_arguments

    from mixweight.core.model import build_model
    from mixweight.data.manifest import load_manifest

    transformers.logging.set_verbosity_error()
    cuda = torch.cuda.is_available()

    class SyncedStepEnd(TrainerCallback):
        def __init__(self):
            self.ends: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            self.ends.append(time.perf_counter())

    corpus = Path(spec["corpus"])
    model = build_model(spec["model"], load_manifest(corpus), seed=0)
    bf16 = spec["precision"] == "bf16"
    training_args = matched_arguments(
        spec["run_dir"], spec["steps"], spec["batch_size"], spec["warmup_steps"], cuda, bf16
    )
    timer = SyncedStepEnd()
    trainer = DomainTrainer(
        model=model, args=training_args, train_dataset=BlockDataset(corpus), data_collator=collate, callbacks=[timer]
    )
    _reset_peak()
    started = time.perf_counter()
    result = trainer.train()
    wall = time.perf_counter() - started
    if len(timer.ends) != spec["steps"]:
        raise RuntimeError(f"transformers.Trainer ran {len(timer.ends)} steps, expected {spec['steps']}")
    periods = np.diff(timer.ends)[max(spec["drop_steps"] - 1, 0) :].tolist()  # period i ends step i + 2
    tokens_per_step = spec["batch_size"] * spec["seq_len"]
    return {
        "tokens_per_s": tokens_per_step / statistics.median(periods),
        "timed_steps": len(periods),
        "wall_s": wall,
        "loss": result.training_loss,
        "loss_kind": "mean over steps",
        **peak_memory(),
    }


class _OnDevice:
    """A StepObjective run in the check's autocast; the host waits for the previous step's GPU work first, so
    proxy_cost.time_steps's per-step wall time holds one whole step (its optimizer update included)."""

    def __init__(self, inner, autocast):
        self.inner, self.autocast = inner, autocast

    def compute_gradients(self, model, micro_batches, step, world, autocast, lr):
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return self.inner.compute_gradients(model, micro_batches, step, world, self.autocast, lr)


def worker_proxy_steps(spec: dict) -> dict:
    """benchmarks/proxy_cost.py's three arms and its timing function, on the device in spec's precision."""
    import torch

    sys.path.insert(0, str(BENCH_DIR))
    from proxy_cost import time_steps

    from mixweight.core.model import build_model
    from mixweight.data.manifest import load_manifest
    from mixweight.data.streams import read_stream
    from mixweight.domain.doge import DoGEObjective, published_defaults
    from mixweight.domain.doremi import DoReMiWeighting
    from mixweight.train.config import TrainConfig
    from mixweight.train.loop import autocast_context
    from mixweight.train.objective import WeightedLoss
    from mixweight.train.optim import build_optimizer
    from mixweight.train.step import MeanWeighting

    device = _device()
    corpus = spec["corpus"]
    manifest = load_manifest(corpus)
    per_domain = [torch.from_numpy(read_stream(manifest.stream_dir(corpus, "train", d))) for d in manifest.domains]
    k = len(manifest.domains)
    generator = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(spec["proxy_steps"]):  # as proxy_cost.py: every domain sampled uniformly, domain ids kept
        domains = torch.randint(k, (spec["batch_size"],), generator=generator)
        rows = [per_domain[d][torch.randint(len(per_domain[d]), (1,), generator=generator)].squeeze(0) for d in domains]
        batches.append({"input_ids": torch.stack(rows).long().to(device), "domain": domains.to(device)})

    autocast = autocast_context(spec["precision"], device)
    config = TrainConfig(data=".", out=".")
    # On the CPU until the DoReMi arm's first step moves it (DoReMiWeighting does); back after that arm, so
    # the other arms' peak memory does not hold it.
    reference = build_model(spec["model"], manifest, seed=1)
    arms = {  # the arms of proxy_cost.py
        "plain": lambda: WeightedLoss(MeanWeighting()),
        "doremi": lambda: WeightedLoss(DoReMiWeighting(reference, manifest.domains)),
        "doge": lambda: DoGEObjective(manifest.domains, "mix", score="reference", **published_defaults("mix")),
    }
    seconds = {name: [] for name in arms}
    peaks = {name: 0 for name in arms}
    for _ in range(spec["proxy_repeats"]):
        for name, make in arms.items():
            model = build_model(spec["model"], manifest, seed=0).to(device)
            _reset_peak()
            optimizer = build_optimizer(model, config)
            seconds[name].append(time_steps(model, optimizer, batches, _OnDevice(make(), autocast)))
            peaks[name] = max(peaks[name], peak_memory()["peak_memory_bytes"])
            del model, optimizer
            reference.to("cpu")
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    median = {name: statistics.median(s) for name, s in seconds.items()}
    memory = peak_memory()
    return {
        "arms": {
            name: {
                "ms_per_step": median[name] * 1e3,
                "vs_plain": median[name] / median["plain"],
                "peak_memory_bytes": peaks[name],
            }
            for name in arms
        },
        "timed_steps_per_repeat": spec["proxy_steps"] - 1,
        "repeats": spec["proxy_repeats"],
        "peak_memory_kind": memory["peak_memory_kind"],
        "device_name": memory["device_name"],
    }


WORKERS = {"mixweight": worker_mixweight, "transformers": worker_transformers, "proxy_steps": worker_proxy_steps}


def run_worker(kind: str, spec_path: str, result_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    result = WORKERS[kind](spec)
    Path(result_path).write_text(json.dumps(result))
