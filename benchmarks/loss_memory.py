"""Peak CPU memory and time of one forward+backward: full-logits loss vs the chunked loss.

A GPT-2 with GPT-2's vocabulary (V=50257) and a tiny hidden size, L=512, B=8: the logits are
8 x 511 x 50257 fp32 = 822 MB, and the transformer's own activations are small, so the loss
dominates, as it does for real models at large vocabularies.

Honest peak memory: torch's CPU allocations are invisible to tracemalloc, so every arm runs in
a fresh subprocess and reports its peak resident set (getrusage ru_maxrss), and the part of it
that the forward+backward added: peak RSS minus the RSS just before the first forward (model,
batch and torch itself already loaded). Arms alternate (full, chunked, full, ...) so machine
noise hits both alike; the time is the median of each process's timed iterations after the
first.

    python benchmarks/loss_memory.py [--repeats 3] [--iters 3] [--threads 1] [--batch-size 8] [--seq-len 512]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def run_arm(impl: str, batch_size: int, seq_len: int, vocab: int, iters: int, threads: int) -> dict:
    """One process, one arm: forward+backward `iters` times; peak memory and times."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from mixweight.core.chunked_loss import lm_token_losses, sample_means

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = AutoConfig.for_model(
        "gpt2",
        vocab_size=vocab,
        n_layer=2,
        n_head=2,
        n_embd=64,
        n_positions=seq_len,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    model = AutoModelForCausalLM.from_config(config)
    input_ids = torch.randint(0, vocab, (batch_size, seq_len), generator=torch.Generator().manual_seed(1))
    before = _rss_kib()
    times, losses = [], None
    for _ in range(iters):
        model.zero_grad(set_to_none=True)
        began = time.perf_counter()
        token_losses, mask = lm_token_losses(model, input_ids, impl)
        per_sample = sample_means(token_losses, mask)
        per_sample.mean().backward()
        times.append(time.perf_counter() - began)
        losses = per_sample.detach()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    grad_norm = float(torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model.parameters())))
    return {
        "impl": impl,
        "peak_rss_mib": peak / 1024,
        "added_mib": (peak - before) / 1024,
        "baseline_mib": before / 1024,
        "seconds": statistics.median(times[1:] or times),
        "losses": losses.tolist(),
        "grad_norm": grad_norm,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="processes per arm (alternated)")
    parser.add_argument("--iters", type=int, default=3, help="forward+backward per process (the first is not timed)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--arm", help=argparse.SUPPRESS)  # internal: run one arm, print JSON
    args = parser.parse_args()
    if args.arm:
        print(json.dumps(run_arm(args.arm, args.batch_size, args.seq_len, args.vocab, args.iters, args.threads)))
        return

    results: dict[str, list[dict]] = {"full": [], "chunked": []}
    for _ in range(args.repeats):
        for impl in ("full", "chunked"):
            command = [
                sys.executable,
                __file__,
                "--arm",
                impl,
                "--iters",
                str(args.iters),
                "--threads",
                str(args.threads),
                "--batch-size",
                str(args.batch_size),
                "--seq-len",
                str(args.seq_len),
                "--vocab",
                str(args.vocab),
            ]
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            results[impl].append(json.loads(out.strip().splitlines()[-1]))

    def med(impl: str, key: str) -> float:
        return statistics.median(r[key] for r in results[impl])

    full_losses, chunked_losses = results["full"][0]["losses"], results["chunked"][0]["losses"]
    max_diff = max(abs(a - b) for a, b in zip(full_losses, chunked_losses))
    print(
        f"GPT-2 2x64, V={args.vocab}, L={args.seq_len}, B={args.batch_size}, torch threads {args.threads}, "
        f"{args.repeats} processes per arm x {args.iters} forward+backward, load {os.getloadavg()[0]:.1f}"
    )
    print(f"{'arm':8s} {'peak RSS MiB':>13s} {'added by fwd+bwd MiB':>21s} {'s/iter':>8s} {'grad norm':>10s}")
    for impl in ("full", "chunked"):
        print(
            f"{impl:8s} {med(impl, 'peak_rss_mib'):13.0f} {med(impl, 'added_mib'):21.0f} {med(impl, 'seconds'):8.2f} "
            f"{results[impl][0]['grad_norm']:10.6f}"
        )
    print(
        f"chunked / full: peak RSS {med('chunked', 'peak_rss_mib') / med('full', 'peak_rss_mib'):.3f}x, "
        f"added memory {med('chunked', 'added_mib') / med('full', 'added_mib'):.3f}x, "
        f"time {med('chunked', 'seconds') / med('full', 'seconds'):.3f}x; max |per-sample loss difference| "
        f"{max_diff:.2e}"
    )


if __name__ == "__main__":
    main()
