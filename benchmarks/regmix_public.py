"""Leak-free evaluation of every RegMix regressor on RegMix's published 1M-scale swarm.

    python benchmarks/regmix_public.py DATA_DIR [--folds 5] [--validation 64] [--seed 0]

DATA_DIR holds the four CSV files of sail-sg/regmix's `data/` folder (MIT licence): train_mixture_1m.csv,
train_pile_loss_1m.csv (512 proxy runs of 1M parameters on 1B tokens each over 17 Pile domains, their
validation losses on 13) and test_mixture_1m.csv, test_pile_loss_1m.csv (256 further runs). The target is
RegMix's: the Pile-CC validation loss (`metric/the_pile_pile_cc_val_loss`). The tables are read by
`weights regmix --swarm-table`'s own reader.

1. Choices, on the 512 training runs only (`--folds`-fold cross-validation, seeded): the laws' fit loss
   (least squares, Huber) and floor (free, c <= min(y)), and the power law's share offset.
2. Every regressor fitted on the 512 training runs, scored once on the 256 unseen ones (Spearman, MAE):
   loglinear, power, auto (what `weights regmix` runs by default), mixweight's lightgbm as shipped, and
   RegMix's own LightGBM configuration (gbdt, learning rate 1e-2, up to 1000 trees) with early stopping on
   a validation split of `--validation` training runs (RegMix's notebook stops on the test runs instead;
   here they are never seen before scoring). RegMix's published Spearman is printed beside them.
3. Each regressor's pick: the optimum with the default KL pull (0.05) and without one (0), toward the
   prior `weights regmix --swarm-table` uses without a corpus (the table's mean mixture), and the pick of the
   default command itself. Timings are of one fit, on this machine.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from mixweight.domain import mixing_laws, regmix
from mixweight.domain.regmix_table import read_swarm_table

TARGET = "the_pile_pile_cc"
BOOTSTRAP = 2000
PUBLISHED_SPEARMAN = 0.9892  # RegMix's notebook, Pile-CC at 1M (early stopping on the test runs)
FILES = ("train_mixture_1m.csv", "train_pile_loss_1m.csv", "test_mixture_1m.csv", "test_pile_loss_1m.csv")


def load(data: Path, mixtures: str, losses: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    table = read_swarm_table(data / mixtures, data / losses)
    y = table.losses[:, table.metrics.index(TARGET)]
    keep = np.isfinite(y)
    return table.domains, table.x[keep], y[keep]


def cross_validated(make, x: np.ndarray, y: np.ndarray, folds: int, seed: int) -> dict:
    order = np.random.default_rng(seed).permutation(len(x))
    predicted = np.zeros(len(x))
    for f in range(folds):
        held = order[f::folds]
        keep = np.setdiff1d(np.arange(len(x)), held)
        predicted[held] = make().fit(x[keep], y[keep, None]).predict(x[held])
    return regmix.fit_statistics(predicted, y)


def law(name: str, loss: str, floor: bool):
    return regmix.make_regressor(name, 0, loss=loss, floor_at_min=floor)


class RegMixLightGBM:
    """RegMix's notebook configuration, early-stopped (3 rounds, l2) on a validation split of the training runs."""

    def __init__(self, validation: int, seed: int):
        self.validation, self.seed = validation, seed

    def fit(self, x: np.ndarray, y: np.ndarray) -> "RegMixLightGBM":
        import lightgbm

        order = np.random.default_rng(self.seed).permutation(len(x))
        held, keep = order[: self.validation], order[self.validation :]
        self.model = lightgbm.LGBMRegressor(
            boosting_type="gbdt", objective="regression", n_estimators=1000, learning_rate=1e-2, random_state=42,
            verbose=-1, n_jobs=1,
        )  # fmt: skip
        target = y.mean(axis=1)
        self.model.fit(
            x[keep], target[keep], eval_set=[(x[held], target[held])], eval_metric="l2",
            callbacks=[lightgbm.early_stopping(3, verbose=False)],
        )  # fmt: skip
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict(np.atleast_2d(x)), dtype=np.float64)


def interval(values) -> str:
    low, high = np.percentile(values, [2.5, 97.5])
    return f"[{low:.4f}, {high:.4f}]"


def top(domains: list[str], w: np.ndarray, n: int = 3) -> str:
    order = np.argsort(-w, kind="stable")[:n]
    return ", ".join(f"{domains[i].removeprefix('the_pile_')} {w[i]:.3f}" for i in order)


def default_pick(data: Path) -> dict:
    """`mixweight weights regmix --swarm-table TRAIN_MIXTURES TRAIN_LOSSES --target the_pile_pile_cc`, in-process."""
    from mixweight.cli import main

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "w.json"
        argv = ["weights", "regmix", "--swarm-table", str(data / FILES[0]), str(data / FILES[1])]
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            main([*argv, "--target", TARGET, "--out", str(out)])
        return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, help="the folder holding RegMix's four 1M-scale CSV files")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--validation", type=int, default=64, help="training runs held out for early stopping")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    missing = [f for f in FILES if not (args.data / f).is_file()]
    if missing:
        raise SystemExit(f"regmix_public: {args.data} lacks {missing}")
    domains, x, y = load(args.data, *FILES[:2])
    test_domains, x_test, y_test = load(args.data, *FILES[2:])
    assert test_domains == domains
    load_avg = os.getloadavg()
    print(f"training runs {len(x)}, unseen runs {len(x_test)}, domains {len(domains)}; load {load_avg[0]:.1f}\n")

    print(f"## 1. Choices: {args.folds}-fold cross-validation on the {len(x)} training runs only\n")
    print("| law | fit loss | floor | CV Spearman | CV MAE |")
    print("|---|---|---|---|---|")
    for name in ("loglinear", "power"):
        for loss in ("least_squares", "huber"):
            for floor in (False, True):
                stats = cross_validated(lambda n=name, fit=loss, f=floor: law(n, fit, f), x, y, args.folds, args.seed)
                label = "c <= min(y)" if floor else "free"
                print(f"| {name} | {loss} | {label} | {stats['spearman']:.4f} | {stats['mae']:.4f} |")
    default_eps = mixing_laws.EPS
    for eps in (1e-4, 1e-3, 1e-2):
        mixing_laws.EPS = eps
        stats = cross_validated(lambda: law("power", "huber", False), x, y, args.folds, args.seed)
        print(f"| power, share offset {eps:g} | huber | free | {stats['spearman']:.4f} | {stats['mae']:.4f} |")
    mixing_laws.EPS = default_eps

    prior = x.mean(axis=0)
    prior /= prior.sum()
    auto = regmix.resolve_regressor("auto", len(x), len(domains))
    print(f"\n## 2. Fitted on the {len(x)} training runs, scored on the {len(x_test)} unseen ones\n")
    print(f"RegMix's published Spearman (LightGBM, early-stopped on the unseen runs): {PUBLISHED_SPEARMAN}")
    print(f"[95% intervals: {BOOTSTRAP} bootstrap resamples of the unseen runs; the fits are not redone]\n")
    print("| regressor | Spearman (unseen) | MAE (unseen) | fit s | pick, kl 0.05: top 3 | pick, kl 0: top 3 |")
    print("|---|---|---|---|---|---|")
    resamples = np.random.default_rng(args.seed).integers(0, len(x_test), size=(BOOTSTRAP, len(x_test)))
    predictions = {}
    regressors = {
        "loglinear": lambda: law("loglinear", "huber", False),
        "power": lambda: law("power", "huber", False),
        f"auto (= {auto})": lambda: law(auto, "huber", False),
        "loglinear, least squares, free floor": lambda: law("loglinear", "least_squares", False),
        "loglinear, least squares, c <= min(y) (before)": lambda: law("loglinear", "least_squares", True),
        "lightgbm (mixweight's)": lambda: regmix.make_regressor("lightgbm", args.seed),
        f"RegMix's LightGBM, early-stopped on {args.validation} training runs": lambda: RegMixLightGBM(
            args.validation, args.seed
        ),
    }
    for name, make in regressors.items():
        started = time.perf_counter()
        model = make().fit(x, y[:, None])
        seconds = time.perf_counter() - started
        predicted = model.predict(x_test)
        predictions[name] = predicted
        stats = regmix.fit_statistics(predicted, y_test)
        rho = interval([spearmanr(predicted[i], y_test[i]).statistic for i in resamples])
        mae = interval([np.abs(predicted[i] - y_test[i]).mean() for i in resamples])
        picks = []
        for kl in (0.05, 0.0):
            w = regmix.optimise(model, prior, kl_reg=kl, seed=args.seed, starts=x[int(np.argmin(y))])
            picks.append(f"{top(domains, w)} (predicted {model.predict(w)[0]:.3f})")
        print(
            f"| {name} | {stats['spearman']:.4f} {rho} | {stats['mae']:.4f} {mae} | {seconds:.1f} | {picks[0]} "
            f"| {picks[1]} |"
        )
    default, trees = predictions[f"auto (= {auto})"], predictions["lightgbm (mixweight's)"]
    gap = [spearmanr(default[i], y_test[i]).statistic - spearmanr(trees[i], y_test[i]).statistic for i in resamples]
    print(f"\nSpearman of the default minus mixweight's lightgbm, paired over the same resamples: {interval(gap)}")

    artifact = default_pick(args.data)
    w = np.array(artifact["weights"])
    fit = artifact["method"]["fit"]
    print(
        f"\n## 3. The default command's pick (regressor {artifact['method']['regressor']} -> {fit['regressor']}, "
        f"{fit['loss']} fit, kl_reg {artifact['method']['kl_reg']}): {top(artifact['domains'], w, 6)}; "
        f"largest weight {w.max():.3f}, {int((w > 0.01).sum())} domains above 0.01; its own "
        f"{fit['cross_validation']['method']} Spearman {fit['cross_validation']['spearman']:.4f}"
    )
    print(f"load at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
