"""One device check: the GPU numbers users ask about, measured side by side in one run.

    benchmarks/device_check.sh                 # on one GPU, under 8 minutes; writes benchmarks/device_check.json
    benchmarks/device_check.sh --cpu --out /tmp/dry.json    # tiny sizes on the CPU: exercises every part

Parts (each in its own process, with its own time budget; a part that fails or runs out of time is
recorded with its error and the others still run; the JSON is rewritten after every part):
  synth          `mixweight data synth` at the check's seq_len, then the manifest's vocab_size widened to
                 --vocab (50257, GPT-2's): the token ids stay < 256, the model gets a 50257-row embedding
                 and output projection, so memory and FLOPs are those of the real model
  mixweight      `mixweight train` (the CLI entry point, in the worker process), plain mean loss, the defaults
                 otherwise (so loss_impl auto, which is chunked at V=50257 x L=512, where that option exists)
  transformers   `transformers.Trainer` on the same model spec, init, corpus blocks, batch, optimizer and
                 schedule (benchmarks/throughput.py's dataset, collator and Trainer subclass)
  linupper       `mixweight train --sample-weighting linupper` (overhead vs the mixweight arm)
  proxy_steps    benchmarks/proxy_cost.py's arms on the device: plain step, DoReMi proxy step, DoGE proxy step
  loss_full, loss_chunked   `--loss-impl full|chunked` (only when `mixweight train --help` lists --loss-impl)
  compile        `mixweight train --compile` (only when listed) vs the mixweight (eager) arm

tokens/s = tokens per step / median step time over the steps after the first --drop-steps.
  mixweight: its own per-step `time.tokens_per_s` (metrics.jsonl, --log-every 1): data, forward,
  backward, clip, optimizer, scheduler; the step ends in a host sync (`.item()` of the objective).
  transformers: the period between consecutive `on_step_end` callbacks, each after torch.cuda.synchronize(),
  so it holds the same work (data included) and no step's GPU work leaks into the next.
MFU = FLOPs per token x tokens/s / the device's peak dense bf16 FLOPs, FLOPs per token = 6N + 12*L*H*Q*T
  (the PaLM appendix B / nanoGPT estimate: N = parameters that take part in matmuls, i.e. without the
  position embedding, the input embedding counted once as the output projection when tied; L layers,
  H heads, Q head size, T sequence length; the attention term counts the full T x T scores as those
  estimates do). Peak memory = torch.cuda.max_memory_allocated() of the worker (CPU: the worker's max RSS,
  labelled so).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(REPO))  # the checkout's mixweight, installed or not
SCHEMA = "mixweight-device-check/1"
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}

# Peak dense bf16 tensor FLOPs (no sparsity), from the vendor data sheets. The H100 entry is the SXM part
# (reported as "H100 80GB HBM3"); the PCIe (756e12) and NVL (835e12) parts differ, so they stay unknown.
PEAK_BF16 = [
    (re.compile(r"H200"), 989e12),
    (re.compile(r"H100(?!.*(PCIe|NVL))"), 989e12),
    (re.compile(r"A100"), 312e12),
    (re.compile(r"\bL4\b"), 121e12),
]

# Sizes. gpu: the real check; cpu: a dry run that exercises every part in seconds of compute.
PROFILES = {
    "gpu": {
        "model": "gpt2-mini",
        "seq_len": 512,
        "batch_size": 8,
        "steps": 200,
        "drop_steps": 30,
        "warmup_steps": 20,
        "tokens_per_domain": 131_072,
        "proxy_steps": 20,
        "proxy_repeats": 2,
        "total_budget_s": 450,
    },
    "cpu": {
        "model": "gpt2-micro",
        "seq_len": 64,
        "batch_size": 2,
        "steps": 6,
        "drop_steps": 2,
        "warmup_steps": 1,
        "tokens_per_domain": 4096,
        "proxy_steps": 3,
        "proxy_repeats": 1,
        "total_budget_s": 3600,
    },
}
# Seconds each part may take at most (gpu; the cpu dry run gets 10x, the shared CI CPU is slow). The whole
# run is also bounded by the profile's total_budget_s: a part never gets more than what is left of it.
PART_BUDGET_S = {
    "synth": 60,
    "mixweight": 90,
    "transformers": 90,
    "linupper": 90,
    "proxy_steps": 90,
    "loss_full": 90,
    "loss_chunked": 90,
    "compile": 180,
}
PARTS = list(PART_BUDGET_S)
WORK_MARKER = ".mixweight-device-check"
MIN_PART_S = 10  # a part is skipped, not started, when less than this is left of the total budget


# ---------------------------------------------------------------- pure helpers (tested directly)


def peak_bf16_flops(device_name: str | None) -> float | None:
    """The device's peak dense bf16 FLOPs from the table, or None when it is not in the table."""
    if not device_name:
        return None
    for pattern, flops in PEAK_BF16:
        if pattern.search(device_name):
            return flops
    return None


def train_flags(help_text: str) -> dict[str, bool]:
    """Which optional `mixweight train` flags this checkout has (other work adds them over time)."""

    def has(flag: str) -> bool:
        return re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text) is not None

    return {"loss_impl": has("--loss-impl"), "compile": has("--compile")}


def model_flops(spec: str, corpus: str | Path) -> dict:
    """Parameter counts and FLOPs per token of `spec` on the corpus (model built on the meta device)."""
    import torch
    from transformers import AutoModelForCausalLM

    from mixweight.core.model import build_config
    from mixweight.data.manifest import load_manifest

    manifest = load_manifest(corpus)
    config = build_config(spec, manifest)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    total = sum(p.numel() for p in model.parameters())  # a tied weight is listed once
    embedding = model.get_input_embeddings().weight
    output = model.get_output_embeddings()
    tied = output is not None and output.weight is embedding
    positions = sum(
        m.weight.numel()
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Embedding)
        and name.rsplit(".", 1)[-1] in ("wpe", "position_embeddings", "embed_positions")
    )
    # The input embedding is a lookup, not a matmul; the output projection is one (counted once when tied).
    matmul = total - positions - (0 if tied else embedding.numel())
    layers, heads = config.num_hidden_layers, config.num_attention_heads
    head_size = config.hidden_size // heads
    attention = 12 * layers * heads * head_size * manifest.seq_len
    return {
        "parameters": total,
        "matmul_parameters": matmul,
        "layers": layers,
        "heads": heads,
        "head_size": head_size,
        "seq_len": manifest.seq_len,
        "vocab_size": manifest.vocab_size,
        "flops_per_token": 6 * matmul + attention,
        "attention_flops_per_token": attention,
    }


def _finite_or_null(value):
    """JSON has no NaN/inf: a non-finite number is written as null (the test then flags it)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_null(v) for v in value]
    return value


def finite_positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


# ---------------------------------------------------------------- workers (one process per part)


def _device():
    import torch

    return torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu")


def _peak_memory() -> dict:
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
    """`mixweight train` through its CLI entry point, in this process (so its peak memory is ours to read)."""
    from mixweight.cli import main as mixweight_main

    steps = spec["steps"]
    argv = [
        "train",
        "--data",
        spec["corpus"],
        "--out",
        spec["run_dir"],
        "--model",
        spec["model"],
        "--steps",
        str(steps),
        "--batch-size",
        str(spec["batch_size"]),
        "--warmup-steps",
        str(spec["warmup_steps"]),
        "--eval-every",
        "0",
        "--eval-blocks",
        "1",
        "--eval-batch-size",
        str(spec["batch_size"]),
        "--checkpoint-every",
        str(10**9),
        "--keep-checkpoints",
        "1",
        "--log-every",
        "1",
        "--weight-histogram-every",
        str(10**9),
        "--precision",
        spec["precision"],
        "--seed",
        "0",
        "--no-progress",
        *spec["extra_args"],
    ]
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
        **_peak_memory(),
    }


def worker_transformers(spec: dict) -> dict:
    """transformers.Trainer with throughput.py's dataset/collator/Trainer, on the device, in spec's precision."""
    import numpy as np
    import torch
    import transformers
    from transformers import TrainerCallback, TrainingArguments

    sys.path.insert(0, str(BENCH_DIR))
    from throughput import BETAS, CLIP, FINAL_LR, LR, WEIGHT_DECAY, BlockDataset, DomainTrainer, collate

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
    training_args = TrainingArguments(
        output_dir=spec["run_dir"],
        max_steps=spec["steps"],
        per_device_train_batch_size=spec["batch_size"],
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
        warmup_steps=spec["warmup_steps"],
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
        **_peak_memory(),
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
    from mixweight.domain.doremi import DoReMiReduction
    from mixweight.train.config import TrainConfig
    from mixweight.train.loop import autocast_context
    from mixweight.train.objective import WeightedLoss
    from mixweight.train.optim import build_optimizer
    from mixweight.train.step import MeanReduction

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
    # On the CPU until the DoReMi arm's first step moves it (DoReMiReduction does); back after that arm, so
    # the other arms' peak memory does not hold it.
    reference = build_model(spec["model"], manifest, seed=1)
    arms = {  # the arms of proxy_cost.py
        "plain": lambda: WeightedLoss(MeanReduction()),
        "doremi": lambda: WeightedLoss(DoReMiReduction(reference, manifest.domains)),
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
            peaks[name] = max(peaks[name], _peak_memory()["peak_memory_bytes"])
            del model, optimizer
            reference.to("cpu")
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    median = {name: statistics.median(s) for name, s in seconds.items()}
    memory = _peak_memory()
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


# ---------------------------------------------------------------- driver


class Interrupted(BaseException):
    """SIGTERM (an outer `timeout`): stop the running part, record what there is, write the JSON."""


def _on_sigterm(signum, frame):
    raise Interrupted()


def _tail(text: str, chars: int = 1500) -> str:
    return text[-chars:].strip()


def run_part(argv: list[str], budget_s: float, env: dict | None = None, cwd: str | Path | None = None) -> dict:
    """Run one part's command in its own process group within `budget_s`; never raises for the part's failure.

    Returns {"status": "ok"|"failed"|"timeout", "elapsed_s", "output_tail", "error"?}; on timeout (or SIGTERM)
    the whole group is killed, so no data-loader child outlives its part."""
    started = time.perf_counter()
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd, start_new_session=True
    )
    try:
        output, _ = process.communicate(timeout=budget_s)
        status = "ok" if process.returncode == 0 else "failed"
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        status = "timeout"
    except BaseException:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    outcome = {"status": status, "elapsed_s": round(time.perf_counter() - started, 2), "output_tail": _tail(output)}
    if status == "failed":
        outcome["error"] = f"exit status {process.returncode}: {_tail(output, 600)}"
    elif status == "timeout":
        outcome["error"] = f"ran past its budget of {budget_s:.0f} s and was killed"
    return outcome


class Check:
    def __init__(self, args):
        self.args = args
        self.profile = dict(PROFILES["cpu" if args.cpu else "gpu"])
        for key in ("model", "steps", "batch_size", "seq_len"):
            if getattr(args, key) is not None:
                self.profile[key] = getattr(args, key)
        self.budget_scale = 10 if args.cpu else 1
        self.deadline = time.monotonic() + (args.total_budget_s or self.profile["total_budget_s"])
        self.work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="mw-device-check-"))
        self.corpus = self.work / "corpus"
        self.env = {
            **os.environ,
            **OFFLINE_ENV,
            "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
        }
        if not args.cpu and "CUDA_VISIBLE_DEVICES" not in os.environ:
            self.env["CUDA_VISIBLE_DEVICES"] = "0"  # one GPU: transformers.Trainer would take every visible one
        if args.cpu:
            self.env["CUDA_VISIBLE_DEVICES"] = ""  # the dry run stays on the CPU even on a GPU machine
        self.started = time.time()
        self.result = {
            "schema": SCHEMA,
            "mode": "cpu" if args.cpu else "gpu",
            "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started)),
            "config": {**self.profile, "vocab_size": args.vocab, "precision": args.precision},
            "flags": {},
            "parts": {},
            "summary": {},
        }

    # --- bookkeeping -----------------------------------------------------------------
    def write(self) -> None:
        self.result["wall_s"] = round(time.time() - self.started, 2)
        out = Path(self.args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = out.with_name(out.name + ".partial")
        staging.write_text(json.dumps(_finite_or_null(self.result), indent=1, allow_nan=False) + "\n")
        os.replace(staging, out)  # a reader never sees half a file

    def budget(self, part: str) -> float:
        return min(PART_BUDGET_S[part] * self.budget_scale, self.deadline - time.monotonic())

    def part(self, name: str, argv: list[str], result_file: Path | None = None) -> dict:
        budget = self.budget(name)
        if budget < MIN_PART_S:
            record = {"status": "skipped", "error": f"the total budget is spent ({budget:.0f} s left)"}
        else:
            print(f"device_check: {name} (budget {budget:.0f} s) ...", flush=True)
            try:
                record = run_part(argv, budget, env=self.env, cwd=REPO)
            except Interrupted:
                self.result["parts"][name] = {"status": "interrupted", "error": "SIGTERM while it ran"}
                raise
            record["budget_s"] = round(budget, 1)
            if record["status"] == "ok" and result_file is not None:
                record["result"] = json.loads(result_file.read_text())
            print(
                f"device_check: {name}: {record['status']} in {record['elapsed_s']} s"
                + (f" ({record['error']})" if "error" in record else ""),
                flush=True,
            )
        self.result["parts"][name] = record
        self.write()
        return record

    def unavailable(self, name: str, flag: str) -> None:
        self.result["parts"][name] = {
            "status": "not available",
            "error": f"`mixweight train --help` lists no {flag} in this checkout",
        }
        self.write()

    def worker(self, name: str, kind: str, **spec) -> dict:
        run_dir = self.work / name
        shutil.rmtree(run_dir, ignore_errors=True)  # ours: a rerun with the same --work-dir starts clean
        spec = {
            "corpus": str(self.corpus),
            "run_dir": str(run_dir),
            "model": self.profile["model"],
            "steps": self.profile["steps"],
            "batch_size": self.profile["batch_size"],
            "seq_len": self.profile["seq_len"],
            "drop_steps": self.profile["drop_steps"],
            "warmup_steps": self.profile["warmup_steps"],
            "precision": self.args.precision,
            "proxy_steps": self.profile["proxy_steps"],
            "proxy_repeats": self.profile["proxy_repeats"],
            "extra_args": [],
            **spec,
        }
        spec_file, result_file = self.work / f"{name}.spec.json", self.work / f"{name}.result.json"
        spec_file.write_text(json.dumps(spec))
        result_file.unlink(missing_ok=True)
        argv = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, str(spec_file), str(result_file)]
        return self.part(name, argv, result_file)

    # --- the check ---------------------------------------------------------------------
    def run(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        (self.work / WORK_MARKER).touch()  # lets a later run with this --work-dir know the contents are ours
        shown = subprocess.run(
            [sys.executable, "-m", "mixweight", "train", "--help"],
            capture_output=True,
            text=True,
            env=self.env,
            cwd=REPO,
            check=False,
        )
        flags = self.result["flags"] = train_flags(shown.stdout)
        if shown.returncode != 0:  # every part below will fail too, each recording why
            self.result["flags"]["help_error"] = _tail(shown.stdout + shown.stderr, 600)
        self.write()

        shutil.rmtree(self.corpus, ignore_errors=True)
        synth = self.part(
            "synth",
            [
                sys.executable,
                "-m",
                "mixweight",
                "data",
                "synth",
                "--out",
                str(self.corpus),
                "--seq-len",
                str(self.profile["seq_len"]),
                "--tokens-per-domain",
                str(self.profile["tokens_per_domain"]),
            ],
        )
        if synth["status"] == "ok":
            self.widen_vocabulary()
            self.result["model"] = model_flops(self.profile["model"], self.corpus)
            self.write()
        else:
            for name in PARTS[1:]:
                self.result["parts"][name] = {"status": "skipped", "error": "no corpus: the synth part failed"}
            return

        self.worker("mixweight", "mixweight")
        self.worker("transformers", "transformers")
        self.worker("linupper", "mixweight", extra_args=["--sample-weighting", "linupper"])
        self.worker("proxy_steps", "proxy_steps")
        for name, impl in (("loss_full", "full"), ("loss_chunked", "chunked")):
            if flags["loss_impl"]:
                self.worker(name, "mixweight", extra_args=["--loss-impl", impl])
            else:
                self.unavailable(name, "--loss-impl")
        if flags["compile"]:
            self.worker("compile", "mixweight", extra_args=["--compile"])
        else:
            self.unavailable("compile", "--compile")

    def widen_vocabulary(self) -> None:
        """The synthetic corpus has 256 token ids; the check's models need GPT-2's vocabulary size."""
        path = self.corpus / "manifest.json"
        manifest = json.loads(path.read_text())
        manifest["vocab_size"] = self.args.vocab
        manifest["tokenizer"]["fingerprint"] = f"{manifest['tokenizer'].get('fingerprint')}-widened-{self.args.vocab}"
        path.write_text(json.dumps(manifest, indent=1))

    def summarize(self) -> None:
        parts = self.result["parts"]
        model = self.result.get("model", {})
        device_name = next(
            (
                p["result"].get("device_name")
                for p in parts.values()
                if p.get("status") == "ok" and "device_name" in p.get("result", {})
            ),
            None,
        )
        peak = peak_bf16_flops(device_name) if device_name not in (None, "cpu") else None
        self.result["device"] = {
            "name": device_name,
            "peak_bf16_flops": peak,
            "peak_note": (
                f"peak dense bf16 of {device_name} from the table in device_check.py"
                if peak
                else f"{device_name or 'no device'} is not in device_check.py's peak-FLOPs table: MFU is null"
            ),
        }
        self.result["device"].update(_versions())

        def ok(name):
            return parts.get(name, {}).get("result") if parts.get(name, {}).get("status") == "ok" else None

        for name in ("mixweight", "transformers", "linupper", "loss_full", "loss_chunked", "compile"):
            res = ok(name)
            if res is not None:
                res["mfu"] = (
                    model["flops_per_token"] * res["tokens_per_s"] / peak
                    if peak and model.get("flops_per_token")
                    else None
                )

        def ratio(a, b, key):
            ra, rb = ok(a), ok(b)
            return (
                ra[key] / rb[key]
                if ra and rb and finite_positive(ra.get(key)) and finite_positive(rb.get(key))
                else None
            )

        proxy = ok("proxy_steps")
        self.result["summary"] = {
            "mixweight_vs_transformers_tokens_per_s": ratio("mixweight", "transformers", "tokens_per_s"),
            "full_loss_vs_transformers_tokens_per_s": ratio("loss_full", "transformers", "tokens_per_s"),
            "linupper_overhead": ratio("mixweight", "linupper", "tokens_per_s"),  # time per step, linupper / plain
            "chunked_vs_full_peak_memory": ratio("loss_chunked", "loss_full", "peak_memory_bytes"),
            "chunked_vs_full_time": ratio("loss_full", "loss_chunked", "tokens_per_s"),
            "compile_speedup": ratio("compile", "mixweight", "tokens_per_s"),
            "doremi_vs_plain": proxy["arms"]["doremi"]["vs_plain"] if proxy else None,
            "doge_vs_plain": proxy["arms"]["doge"]["vs_plain"] if proxy else None,
            "mfu_mixweight": (ok("mixweight") or {}).get("mfu"),
            "mfu_transformers": (ok("transformers") or {}).get("mfu"),
        }
        self.write()


def _versions() -> dict:
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "cuda": torch.version.cuda}


def _gib(n) -> str:
    return f"{n / 2**30:.2f}" if finite_positive(n) else "-"


def markdown(result: dict) -> str:
    """The run as benchmarks/RESULTS.md tables."""
    parts, cfg, model, summary = result["parts"], result["config"], result.get("model", {}), result["summary"]
    device = result.get("device", {})
    memory_kind = next(
        (
            p["result"].get("peak_memory_kind")
            for p in parts.values()
            if p.get("status") == "ok" and "peak_memory_kind" in p.get("result", {})
        ),
        "-",
    )
    lines = [
        f"Device: {device.get('name')} (peak bf16 {device.get('peak_bf16_flops') or 'unknown'}); torch "
        f"{device.get('torch')}, transformers {device.get('transformers')}, CUDA {device.get('cuda')}. "
        f"{cfg['model']} ({model.get('parameters', 0) / 1e6:.1f}M parameters, V={cfg['vocab_size']}), "
        f"B={cfg['batch_size']} x L={cfg['seq_len']}, {cfg['steps']} steps ({cfg['drop_steps']} dropped), "
        f"{cfg['precision']}; FLOPs/token {model.get('flops_per_token', 0) / 1e9:.3f} G; peak memory: {memory_kind}; "
        f"whole run {result.get('wall_s', 0):.0f} s.",
        "",
        "| arm | tokens/s (median step) | vs mixweight plain | MFU | peak memory (GiB) | first step (s) | status |",
        "|---|---|---|---|---|---|---|",
    ]
    base = parts.get("mixweight", {}).get("result", {}).get("tokens_per_s")
    for name, label in (
        ("mixweight", "mixweight train (plain)"),
        ("transformers", "transformers.Trainer"),
        ("linupper", "mixweight train, LinUpper"),
        ("loss_full", "mixweight train, --loss-impl full"),
        ("loss_chunked", "mixweight train, --loss-impl chunked"),
        ("compile", "mixweight train, --compile"),
    ):
        part = parts.get(name, {})
        res = part.get("result") if part.get("status") == "ok" else None
        if res is None:
            why = f"{part.get('status', 'missing')}: {part.get('error', '')[:80]}"
            lines.append(f"| {label} | - | - | - | - | - | {why} |")
            continue
        vs = f"{res['tokens_per_s'] / base:.2f}x" if finite_positive(base) else "-"
        mfu = f"{res['mfu'] * 100:.1f}%" if res.get("mfu") is not None else "null"
        first = f"{res['first_step_s']:.2f}" if "first_step_s" in res else "-"  # compile time shows here
        lines.append(
            f"| {label} | {res['tokens_per_s']:,.0f} | {vs} | {mfu} | {_gib(res['peak_memory_bytes'])} | {first} | ok |"
        )
    lines += ["", "| proxy step | ms/step (median) | vs plain | peak memory (GiB) |", "|---|---|---|---|"]
    proxy = parts.get("proxy_steps", {})
    if proxy.get("status") == "ok":
        for name, label in (("plain", "plain step"), ("doremi", "DoReMi proxy step"), ("doge", "DoGE proxy step")):
            arm = proxy["result"]["arms"][name]
            lines.append(
                f"| {label} | {arm['ms_per_step']:.1f} | {arm['vs_plain']:.2f}x | {_gib(arm['peak_memory_bytes'])} |"
            )
    else:
        lines.append(f"| (all) | - | - | {proxy.get('status', 'missing')}: {proxy.get('error', '')[:80]} |")
    lines += ["", "| summary | value |", "|---|---|"]
    for key, value in summary.items():
        lines.append(f"| {key} | {'null' if value is None else f'{value:.3f}'} |")
    return "\n".join(lines)


def _refuse_paths(args) -> str | None:
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    parser.add_argument("--cpu", action="store_true", help="dry run: tiny sizes on the CPU (every part, seconds)")
    parser.add_argument("--out", default=str(BENCH_DIR / "device_check.json"), help="the JSON to write")
    parser.add_argument("--markdown", default=None, help="also write the tables to this file")
    parser.add_argument(
        "--work-dir", default=None, help="corpus and run directories (default: a new temp dir, removed at the end)"
    )
    parser.add_argument("--model", default=None, help="model spec (default: gpt2-mini; --cpu: gpt2-micro)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--seq-len", type=int, default=None)
    parser.add_argument("--vocab", type=int, default=50257, help="vocabulary size of the models (GPT-2's)")
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument(
        "--total-budget-s", type=float, default=None, help="seconds for the whole check (default: 450 on a GPU)"
    )
    parser.add_argument("--worker", nargs=3, metavar=("KIND", "SPEC", "RESULT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        os.environ.update(OFFLINE_ENV)
        run_worker(*args.worker)
        return

    os.environ.update(OFFLINE_ENV)
    refusal = _refuse_paths(args)
    if refusal:
        parser.exit(2, f"device_check: error: {refusal}\n")
    check = Check(args)
    if check.profile["steps"] <= check.profile["drop_steps"] + 1:
        parser.error(f"--steps must exceed {check.profile['drop_steps'] + 1} (the dropped steps + 1)")
    signal.signal(signal.SIGTERM, _on_sigterm)
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


if __name__ == "__main__":
    main()
