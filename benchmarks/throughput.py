"""Training tokens/s: `mixweight train` vs `transformers.Trainer`, same model, data and steps.

    .venv/bin/python benchmarks/throughput.py --model gpt2-tiny --batch-size 16 --steps 60 \
        --warmup-steps 10 --seq-len 128 --repeats 3

Both sides train the same model spec (built by mixweight's `build_model`, same seed) on the
same synthetic corpus (MDS streams written by `write_synthetic_corpus`), in fp32 on the CPU,
with AdamW (betas 0.9/0.95, weight decay 0.1), linear warmup + cosine decay to 1e-4, gradient
clipping at 1.0, micro-batch B, sequence length L, one micro-batch per step, and the same
`torch.set_num_threads`. The sides alternate (mixweight, HF, mixweight, HF, ...) `--repeats`
times; each side's first `--warmup-steps` timed steps are dropped.

Two timings per side, each reported as tokens/s = B * L / seconds per step (median over steps,
then median over repeats):
- period (the headline): wall time between the same point of consecutive steps, so it holds
  everything a step costs: data, forward, backward, clip, optimizer, scheduler, logging.
  mixweight: timestamps taken in the sample reduction (called once per step, after backward);
  HF: timestamps at `on_step_end`.
- inner: what each framework's own hooks time. mixweight: `time.tokens_per_s` of every
  metrics.jsonl record (log_every=1): data + forward + backward + clip + optimizer + scheduler,
  without the metrics record. HF: `on_step_begin` -> `on_step_end`, which holds forward, backward,
  clip, optimizer and scheduler but NOT the data (the Trainer fetches the batch before
  `on_step_begin`), so the HF inner number is flattered by the data time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import Trainer, TrainerCallback, TrainingArguments

from mixweight.core.model import build_model
from mixweight.data.manifest import load_manifest
from mixweight.data.streams import read_stream
from mixweight.data.synthetic import write_synthetic_corpus
from mixweight.train.config import TrainConfig
from mixweight.train.loop import train
from mixweight.train.objective import WeightedLoss
from mixweight.train.step import MeanWeighting

LR, FINAL_LR, WEIGHT_DECAY, BETAS, CLIP = 1e-3, 1e-4, 0.1, (0.9, 0.95), 1.0


# ---------------------------------------------------------------- mixweight side


class TimedMeanWeighting(MeanWeighting):
    """The plain mean, plus a timestamp per step (weights() runs once per step, after backward)."""

    def __init__(self):
        self.stamps: list[float] = []

    def weights(self, losses, domains, step, signal=None):
        self.stamps.append(time.perf_counter())
        return super().weights(losses, domains, step)


def run_mixweight(corpus: Path, out: Path, args) -> dict:
    config = TrainConfig(
        data=str(corpus),
        out=str(out),
        model=args.model,
        steps=args.steps,
        batch_size=args.batch_size,
        grad_accum=1,
        lr=LR,
        final_lr=FINAL_LR,
        warmup_steps=args.warmup_steps,
        weight_decay=WEIGHT_DECAY,
        adam_beta1=BETAS[0],
        adam_beta2=BETAS[1],
        grad_clip=CLIP,
        seed=0,
        eval_every=0,
        eval_blocks=8,
        eval_batch_size=32,
        checkpoint_every=10**9,
        log_every=args.log_every,
        precision="fp32",
        progress=False,
    )
    config.validate()
    reduction = TimedMeanWeighting()
    started = time.perf_counter()
    train(config, WeightedLoss(reduction))
    total = time.perf_counter() - started
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line]
    steps = [r for r in records if "time" in r]
    tokens = args.batch_size * args.seq_len
    inner = [tokens / r["time"]["tokens_per_s"] for r in steps if r["step"] > args.warmup_steps]
    period = np.diff(reduction.stamps)[args.warmup_steps :].tolist()
    return {"period": period, "inner": inner, "total_s": total, "final_loss": steps[-1]["loss"]}


# ---------------------------------------------------------------- transformers side


class BlockDataset(torch.utils.data.Dataset):
    """Every train block of every domain (read_stream over the MDS streams), domain id kept."""

    def __init__(self, corpus: Path):
        manifest = load_manifest(corpus)
        blocks, domains = [], []
        for index, domain in enumerate(manifest.domains):
            stream = read_stream(manifest.stream_dir(corpus, "train", domain))
            blocks.append(stream)
            domains.append(np.full(len(stream), index, dtype=np.int64))
        self.blocks = torch.from_numpy(np.concatenate(blocks))
        self.domains = torch.from_numpy(np.concatenate(domains))

    def __len__(self):
        return len(self.blocks)

    def __getitem__(self, i):
        return {"input_ids": self.blocks[i], "domain": self.domains[i]}


def collate(samples: list[dict]) -> dict:
    input_ids = torch.stack([s["input_ids"] for s in samples])
    return {"input_ids": input_ids, "labels": input_ids, "domain": torch.stack([s["domain"] for s in samples])}


class DomainTrainer(Trainer):
    """The domain column rides along in the batch (remove_unused_columns=False); the model never sees it."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = {k: v for k, v in inputs.items() if k != "domain"}
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)


class StepTimer(TrainerCallback):
    def __init__(self):
        self.begins: list[float] = []
        self.ends: list[float] = []

    def on_step_begin(self, args, state, control, **kwargs):
        self.begins.append(time.perf_counter())

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())


def matched_arguments(output_dir: str, steps: int, batch_size: int, warmup_steps: int, cuda=False, bf16=False):
    """transformers.TrainingArguments matching `mixweight train`'s optimizer, schedule and clipping (this file's
    constants), with nothing else running: no evaluation, saving, logging, workers or progress bar."""
    return TrainingArguments(
        output_dir=output_dir,
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=1,
        learning_rate=LR,
        weight_decay=WEIGHT_DECAY,
        adam_beta1=BETAS[0],
        adam_beta2=BETAS[1],
        adam_epsilon=1e-8,
        max_grad_norm=CLIP,
        optim="adamw_torch",
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr": FINAL_LR},
        warmup_steps=warmup_steps,
        use_cpu=not cuda,
        bf16=bf16,
        fp16=False,
        seed=0,
        data_seed=0,
        remove_unused_columns=False,
        report_to=[],
        eval_strategy="no",
        save_strategy="no",
        logging_steps=10**6,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )


def run_hf(corpus: Path, out: Path, dataset: BlockDataset, args) -> dict:
    model = build_model(args.model, load_manifest(corpus), seed=0)
    training_args = matched_arguments(str(out), args.steps, args.batch_size, args.warmup_steps)
    timer = StepTimer()
    trainer = DomainTrainer(
        model=model, args=training_args, train_dataset=dataset, data_collator=collate, callbacks=[timer]
    )
    started = time.perf_counter()
    result = trainer.train()
    total = time.perf_counter() - started
    assert len(timer.ends) == args.steps, f"expected {args.steps} steps, got {len(timer.ends)}"
    inner = [e - b for b, e in zip(timer.begins, timer.ends)][args.warmup_steps :]
    period = np.diff(timer.ends)[args.warmup_steps :].tolist()
    return {"period": period, "inner": inner, "total_s": total, "final_loss": result.training_loss}


# ---------------------------------------------------------------- driver


def _busy_jiffies() -> tuple[int, int]:
    """(busy jiffies of the whole machine, jiffies of this process): to see other processes' load."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    busy = sum(fields) - fields[3] - fields[4]  # minus idle and iowait
    own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    return busy, int(own[11]) + int(own[12])  # utime + stime


def foreign_load(run) -> tuple[dict, float]:
    """Run `run()`; also return the CPU cores other processes kept busy meanwhile (0 on a quiet machine)."""
    busy0, own0 = _busy_jiffies()
    started = time.perf_counter()
    result = run()
    busy1, own1 = _busy_jiffies()
    ticks = os.sysconf("SC_CLK_TCK")
    return result, max((busy1 - busy0) - (own1 - own0), 0) / ticks / (time.perf_counter() - started)


def tokens_per_s(step_seconds: list[float], tokens: int) -> float:
    return tokens / statistics.median(step_seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gpt2-tiny")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup-steps", type=int, default=10, help="timed steps dropped per run (also the lr warmup)")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--tokens-per-domain", type=int, default=131_072)
    parser.add_argument(
        "--log-every",
        type=int,
        default=10,
        help="mixweight metrics interval (its default; 1 adds a metrics record to every step)",
    )
    args = parser.parse_args()
    if args.steps <= args.warmup_steps + 1:
        parser.error("--steps must exceed --warmup-steps + 1")

    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    tokens = args.batch_size * args.seq_len
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, threads {torch.get_num_threads()}; "
        f"{args.model}, B={args.batch_size}, L={args.seq_len}, {tokens} tokens/step, {args.steps} steps "
        f"({args.warmup_steps} dropped), {args.repeats} repeats",
        flush=True,
    )

    rows = {"mixweight": [], "transformers": []}
    with tempfile.TemporaryDirectory(prefix="mw-throughput-") as tmp:
        tmp = Path(tmp)
        corpus = tmp / "corpus"
        write_synthetic_corpus(corpus, seed=0, tokens_per_domain=args.tokens_per_domain, seq_len=args.seq_len)
        dataset = BlockDataset(corpus)
        for repeat in range(args.repeats):
            mw, mw_load = foreign_load(lambda repeat=repeat: run_mixweight(corpus, tmp / f"mw-{repeat}", args))
            hf, hf_load = foreign_load(lambda repeat=repeat: run_hf(corpus, tmp / f"hf-{repeat}", dataset, args))
            for name, res, load in (("mixweight", mw, mw_load), ("transformers", hf, hf_load)):
                row = {
                    "load": load,
                    "period": tokens_per_s(res["period"], tokens),
                    "inner": tokens_per_s(res["inner"], tokens),
                    "total_s": res["total_s"],
                    "final_loss": res["final_loss"],
                }
                rows[name].append(row)
                print(
                    f"  repeat {repeat}: {name:12s} period {row['period']:8,.0f} tok/s  "
                    f"inner {row['inner']:8,.0f} tok/s  run {row['total_s']:5.1f} s  loss {row['final_loss']:.3f}  "
                    f"other processes {load:.2f} cores",
                    flush=True,
                )

    med = {
        name: {k: statistics.median(r[k] for r in rs) for k in ("period", "inner", "total_s", "load")}
        for name, rs in rows.items()
    }
    print()
    print(
        "| side | tokens/s, step period (median) | tokens/s, inner hook (median) | run wall time (s, median) "
        "| other processes' load (cores, median) |"
    )
    print("|---|---|---|---|---|")
    for name in ("mixweight", "transformers"):
        m = med[name]
        print(f"| {name} | {m['period']:,.0f} | {m['inner']:,.0f} | {m['total_s']:.1f} | {m['load']:.2f} |")
    ratio_period = med["mixweight"]["period"] / med["transformers"]["period"]
    ratio_inner = med["mixweight"]["inner"] / med["transformers"]["inner"]
    print(f"| ratio mixweight / HF | {ratio_period:.2f}x | {ratio_inner:.2f}x | | |")


if __name__ == "__main__":
    main()
