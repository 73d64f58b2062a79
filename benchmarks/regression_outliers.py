"""The LinUpper paper's toy problem (Sow et al., ICLR 2025, Appendix B): regression with outliers.

Clean data: y = A x + b + noise, x ~ N(0, I_d). A share of the training set are outliers whose
targets are replaced by --outlier-scale * N(0, 1) (default 10), independent of x. Every method runs minibatch
SGD on sum_i w_i l_i (squared loss l_i per sample) with the same learning rate; only the
weights w differ. The paper does not publish n, d, noise or lr: the defaults below are ours,
chosen once for a quick CPU run and not tuned per method. Metric: MSE on a clean held-out set
(its noise floor is NOISE^2).

    .venv/bin/python benchmarks/regression_outliers.py --out benchmarks/regression_outliers.png
"""

from __future__ import annotations

import argparse
import math
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from mixweight.weighting import sample_weights  # noqa: E402

D, N_TRAIN, N_TEST, NOISE, BATCH, EVAL_EVERY = 20, 4000, 2000, 0.1, 64, 10


def make_data(seed: int, outlier_frac: float, outlier_scale: float):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(D, generator=g) / math.sqrt(D)  # clean targets have variance ~1
    b = torch.randn((), generator=g)

    def clean(n):
        x = torch.randn(n, D, generator=g, dtype=torch.float64)
        return x, x @ a.double() + b.double() + NOISE * torch.randn(n, generator=g, dtype=torch.float64)

    x, y = clean(N_TRAIN)
    is_out = torch.zeros(N_TRAIN, dtype=torch.bool)
    is_out[torch.randperm(N_TRAIN, generator=g)[: int(outlier_frac * N_TRAIN)]] = True
    y[is_out] = outlier_scale * torch.randn(int(is_out.sum()), generator=g, dtype=torch.float64)
    return (x, y, is_out), clean(N_TEST)


def dro_kl_weights(losses: torch.Tensor, kl: float) -> torch.Tensor:
    """KL-regularized DRO baseline: w proportional to exp(l_i / kl), no cap on the top weight."""
    return torch.softmax(losses.detach() / kl, dim=0)


def method_weights(name: str, r: float, kl: float):
    if name == "uniform":
        return lambda losses: torch.full_like(losses, 1.0 / losses.numel())
    if name.startswith("dro-kl"):
        return lambda losses: dro_kl_weights(losses, kl)
    return lambda losses: sample_weights(losses, name, r=r)


def train(name, weigh, lr, steps, seed, outlier_frac, outlier_scale):
    """SGD on a linear model from zero; returns (steps, clean test MSE, outlier weight share)."""
    (x, y, is_out), (xt, yt) = make_data(seed, outlier_frac, outlier_scale)
    g = torch.Generator().manual_seed(10_000 + seed)  # same minibatches for every method
    w = torch.zeros(D, dtype=torch.float64, requires_grad=True)
    c = torch.zeros((), dtype=torch.float64, requires_grad=True)
    curve, share = [], []
    for step in range(steps + 1):
        if step % EVAL_EVERY == 0:
            with torch.no_grad():
                mse = float(((xt @ w + c - yt) ** 2).mean())
            curve.append(mse if math.isfinite(mse) else math.inf)
            if not math.isfinite(mse):  # diverged: the rest of the curve is inf
                curve += [math.inf] * (steps // EVAL_EVERY + 1 - len(curve))
                break
        if step == steps:
            break
        idx = torch.randint(0, N_TRAIN, (BATCH,), generator=g)
        losses = (x[idx] @ w + c - y[idx]) ** 2
        weights = weigh(losses)
        share.append(float(weights[is_out[idx]].sum()))
        w.grad = c.grad = None
        (weights * losses).sum().backward()
        with torch.no_grad():
            w -= lr * w.grad
            c -= lr * c.grad
    return curve, sum(share) / max(len(share), 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--lr", type=float, default=0.05, help="shared learning rate")
    p.add_argument("--small-lr", type=float, default=0.005, help="extra DRO-KL run")
    p.add_argument("--r", type=float, default=0.4)
    p.add_argument("--kl", type=float, default=1.0)
    p.add_argument("--outlier-frac", type=float, default=0.25)
    p.add_argument("--outlier-scale", type=float, default=10.0, help="outlier targets: scale * N(0, 1)")
    p.add_argument("--out", default="benchmarks/regression_outliers.png")
    args = p.parse_args()
    torch.set_num_threads(2)

    runs = [(m, args.lr) for m in ("uniform", "linupper", "quadratic", "extremes", "dro-kl")]
    runs.append(("dro-kl", args.small_lr))
    t0 = time.time()
    print(
        f"d={D} n_train={N_TRAIN} ({args.outlier_frac:.0%} outliers x{args.outlier_scale:g}) n_test={N_TEST} "
        f"noise={NOISE} batch={BATCH} steps={args.steps} seeds={args.seeds} r={args.r} kl={args.kl}"
    )
    print(
        f"\n| method | lr | final clean-test MSE (mean +- std) | diverged | MSE at step {args.steps // 4} "
        f"| outlier weight share |\n|---|---|---|---|---|---|"
    )
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, lr in runs:
        results = [
            train(name, method_weights(name, args.r, args.kl), lr, args.steps, s, args.outlier_frac, args.outlier_scale)
            for s in range(args.seeds)
        ]
        curves = torch.tensor([c for c, _ in results])
        finite = torch.isfinite(curves[:, -1])
        fin = curves[finite]
        label = f"{name} (lr={lr:g})"
        if len(fin):
            final = f"{float(fin[:, -1].mean()):.4f} +- {float(fin[:, -1].std(unbiased=False)):.4f}"
            early = f"{float(fin[:, len(fin[0]) // 4].mean()):.4f}"
            mean = fin.mean(0)
            ax.plot([i * EVAL_EVERY for i in range(len(mean))], mean.tolist(), label=label)
        else:
            final, early = "diverged", "-"
        diverged = int((~finite).sum())
        share = sum(s for _, s in results) / len(results)
        print(f"| {label} | {lr:g} | {final} | {diverged}/{args.seeds} | {early} | {share:.3f} |")
        if diverged:  # show where it blew up: the first diverged seed, up to its first inf
            bad = curves[~finite][0]
            k = int(torch.isfinite(bad).sum())
            ax.plot([i * EVAL_EVERY for i in range(k)], bad[:k].tolist(), "--", label=f"{label}, diverged seed")
    ax.axhline(NOISE**2, color="gray", lw=0.8, ls=":", label="noise floor")
    ax.set(
        yscale="log",
        xlabel="SGD step",
        ylabel="clean test MSE (mean over seeds)",
        title=f"Linear regression, {args.outlier_frac:.0%} outliers (x{args.outlier_scale:g}), r={args.r}",
    )
    ax.set_ylim(top=1e3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"\nplot: {args.out}  ({time.time() - t0:.1f} s)")


if __name__ == "__main__":
    main()
