"""Training throughput with 1 and 2 processes, and what the weighting statistics cost in communication.

Side by side in one run, the same global batch, model and data:
  - `mixweight train` in one process (all cores) vs `torchrun --nproc_per_node=2` (DDP, gloo on CPU,
    nccl on GPU), LinUpper sample weighting on; tokens/s from metrics.jsonl (median over steps);
  - inside a 2-process group: the time of the step's statistics exchange (all-gather of the per-sample
    losses and domain ids: 2N numbers) as a share of the whole step.

    python benchmarks/scaling.py [--model gpt2-tiny] [--global-batch 16] [--steps 40]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from mixweight.data.synthetic import write_synthetic_corpus

WORKER = Path(__file__).with_name("scaling_comm_worker.py")


def tokens_per_s(run_dir: Path, skip: int) -> float:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["time"]["tokens_per_s"] for r in records if "time" in r and r["step"] > skip]
    return statistics.median(rates)


def train(processes: int, corpus: str, out: Path, args) -> float:
    launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}", "--master_port=29611"]
    command = [
        *(launcher if processes > 1 else [sys.executable]),
        "-m",
        "mixweight",
        "train",
        "--data",
        corpus,
        "--out",
        str(out),
        "--model",
        args.model,
        "--steps",
        str(args.steps),
        "--batch-size",
        str(args.global_batch // processes),
        "--sample-weighting",
        "linupper",
        "--eval-every",
        "0",
        "--eval-blocks",
        "4",
        "--log-every",
        "1",
        "--no-progress",
    ]
    subprocess.run(command, check=True, capture_output=True)
    return tokens_per_s(out, skip=5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gpt2-tiny")
    parser.add_argument("--global-batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        corpus = f"{tmp}/corpus"
        write_synthetic_corpus(corpus, tokens_per_domain=64 * 1024, seq_len=128)
        rates = {n: train(n, corpus, Path(tmp) / f"run-{n}", args) for n in (1, 2)}
        comm = (
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "torch.distributed.run",
                    "--nproc_per_node=2",
                    "--master_port=29612",
                    str(WORKER),
                    corpus,
                    args.model,
                    str(args.global_batch // 2),
                ],
                check=True,
                capture_output=True,
                text=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
    comm = json.loads(comm)
    print(f"model {args.model}, global batch {args.global_batch} x 128 tokens, LinUpper on")
    print(f"{'processes':>10s} {'tokens/s':>10s}")
    for n, rate in rates.items():
        print(f"{n:>10d} {rate:>10,.0f}")
    print(f"2 processes / 1 process: {rates[2] / rates[1]:.2f}x")
    print(
        f"weighting statistics exchange: {comm['exchange_ms']:.3f} ms of a {comm['step_ms']:.1f} ms step "
        f"({100 * comm['exchange_ms'] / comm['step_ms']:.2f}%)"
    )


if __name__ == "__main__":
    main()
