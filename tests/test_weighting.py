"""Sample weights (mixweight.weighting) against hand-computed values and edge cases."""

import math

import pytest
import torch

from mixweight.weighting import (
    STRATEGIES,
    RSchedule,
    SampleWeighting,
    normalize_losses,
    sample_weights,
    weight_stats,
)

LOSSES = torch.tensor([1.0, 2.0, 3.0, 4.0])  # normalizes to x = -1, -1/3, 1/3, 1
NAN, INF = float("nan"), float("inf")


def softmax_by_hand(scores, r):
    e = [math.exp(s / r) for s in scores]
    return [v / sum(e) for v in e]


def close(actual, expected, tol=1e-6):
    assert actual.tolist() == pytest.approx(expected, abs=tol)


def test_normalize_losses():
    close(normalize_losses(LOSSES), [-1.0, -1 / 3, 1 / 3, 1.0])
    close(normalize_losses(torch.tensor([5.0, 5.0, 5.0])), [0.0, 0.0, 0.0])
    # span below the 1e-6 floor: centred on 0 and shrunk by span / 1e-6 (not pushed towards -1)
    close(normalize_losses(torch.tensor([1.0, 1.0 + 1e-7], dtype=torch.float64)), [-0.1, 0.1], tol=1e-9)


FLOOR = 1e-6


@pytest.mark.parametrize("factor", [1e-6, 0.5, 1 - 1e-9, 1.0, 1 + 1e-9, 3.0])
def test_normalize_losses_at_the_spread_floor(factor):
    """Spreads s below, at and above the floor: x = [-1, 0, 1] * min(s / floor, 1), continuous at the floor."""
    s = FLOOR * factor
    x = normalize_losses(torch.tensor([0.0, s / 2, s], dtype=torch.float64))
    scale = min(factor, 1.0)
    close(x, [-scale, 0.0, scale], tol=1e-12)


def test_normalize_losses_above_the_floor_is_the_papers_formula_bit_for_bit():
    """The centring changes nothing at or above the floor: same bits as 2 (l - l_min) / spread - 1."""
    gen = torch.Generator().manual_seed(0)
    cases = [
        torch.rand(257, generator=gen, dtype=torch.float64) * 5,
        torch.rand(64, generator=gen) + 3.0,
        torch.tensor([0.0, 0.3e-6, FLOOR], dtype=torch.float64),
    ]  # spread exactly at the floor
    for losses in cases:
        lo, span = losses.min(), losses.max() - losses.min()
        assert float(span) >= FLOOR
        assert torch.equal(normalize_losses(losses), 2.0 * (losses - lo) / span - 1.0)


def test_near_equal_losses_get_near_uniform_weights():
    """31 losses of 5.0 and one a float32 ulp above (spread 4.8e-7, below the floor).

    The uncentred floor gave the odd one x = -0.05 and the rest x = -1: LinUpper weights with
    max/min 10.9 and max w x N 8.3. Centred, x = +-0.48: max/min = e^(0.48 / r) = 3.3.
    """
    five = torch.tensor(5.0, dtype=torch.float32)
    losses = torch.full((32,), 5.0, dtype=torch.float32)
    losses[7] = torch.nextafter(five, torch.tensor(6.0))
    spread = float(losses[7].double() - 5.0)
    w = sample_weights(losses, "linupper", r=0.4)
    ratio = float(w.max() / w.min())
    assert ratio == pytest.approx(math.exp(spread / FLOOR / 0.4), rel=1e-6)
    assert ratio < 3.4 and float(w.max()) * 32 < 3.1
    assert int(w.argmax()) == 7
    # the weights shrink continuously to uniform as the spread goes to 0
    tiny = torch.tensor([5.0] * 31 + [5.0 + 1e-12], dtype=torch.float64)
    close(sample_weights(tiny, "linupper", r=0.4), [1 / 32] * 32, tol=1e-7)


@pytest.mark.parametrize(
    "strategy, scores",
    [
        ("linupper", [0.0, 2 / 3, 1.0, 1.0]),  # min(x + 1, 1)
        ("quadratic", [0.0, 8 / 9, 8 / 9, 0.0]),  # 1 - x^2
        ("extremes", [1.0, 1 / 3, 1 / 3, 1.0]),  # |x|
        ("uniform", [0.0, 0.0, 0.0, 0.0]),
    ],
)
@pytest.mark.parametrize("r", [0.4, 1.0])
def test_hand_computed_weights(strategy, scores, r):
    w = sample_weights(LOSSES, strategy, r=r)
    close(w, softmax_by_hand(scores, r))
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-6)
    assert w.dtype == torch.float32 and w.shape == LOSSES.shape


def test_registry_names():
    assert set(STRATEGIES) == {"linupper", "quadratic", "extremes", "uniform"}
    close(sample_weights(LOSSES, "none"), [0.25] * 4)
    close(sample_weights(LOSSES, "LinUpper"), sample_weights(LOSSES, "linupper").tolist())


def test_linupper_ratio_is_e_to_one_over_r():
    w = sample_weights(torch.tensor([0.5, 1.7, 2.0, 3.1, 0.9]), "linupper", r=0.4)
    assert float(w.max() / w.min()) == pytest.approx(math.exp(1 / 0.4), rel=1e-5)


def test_large_r_is_uniform():
    for strategy in STRATEGIES:
        close(sample_weights(LOSSES, strategy, r=1e9), [0.25] * 4, tol=1e-7)


def test_small_r_concentrates_on_argmax_f():
    losses = torch.tensor([1.0, 2.0, 2.5, 3.0, 4.0])  # x = -1, -1/3, 0, 1/3, 1
    # LinUpper is flat at 1 for x >= 0: the three samples there share the mass equally.
    close(sample_weights(losses, "linupper", r=1e-6), [0.0, 0.0, 1 / 3, 1 / 3, 1 / 3])
    close(sample_weights(losses, "extremes", r=1e-6), [0.5, 0.0, 0.0, 0.0, 0.5])
    close(sample_weights(losses, "quadratic", r=1e-6), [0.0, 0.0, 1.0, 0.0, 0.0])
    for r in (1e-8, 1e-300):
        w = sample_weights(losses, "linupper", r=r)
        assert torch.isfinite(w).all() and float(w.sum()) == pytest.approx(1.0)


def test_all_equal_single_and_huge():
    for strategy in STRATEGIES:
        close(sample_weights(torch.full((6,), 3.7), strategy), [1 / 6] * 6)
        assert sample_weights(torch.tensor([2.5]), strategy).tolist() == [1.0]
    w = sample_weights(torch.tensor([1e30, 2e30, 3e30, 4e30]), "linupper", r=0.4)
    close(w, softmax_by_hand([0.0, 2 / 3, 1.0, 1.0], 0.4))
    w = sample_weights(torch.tensor([0.0, 3e38]), "linupper", r=0.4)
    assert torch.isfinite(w).all() and float(w.sum()) == pytest.approx(1.0)


def test_nonfinite_losses_get_zero_weight():
    bad = torch.tensor([NAN, 1.0, 2.0, INF, 3.0, -INF, 4.0])
    w = sample_weights(bad, "linupper", r=0.4)
    assert w[[0, 3, 5]].tolist() == [0.0, 0.0, 0.0]
    close(w[[1, 2, 4, 6]], sample_weights(LOSSES, "linupper", r=0.4).tolist())
    assert sample_weights(torch.tensor([NAN, INF]), "linupper").tolist() == [0.0, 0.0]
    # cap counts only the finite samples in N
    wc = sample_weights(bad, "linupper", r=0.1, cap=1.2)
    assert float(wc.max()) <= 1.2 / 4 + 1e-7 and float(wc.sum()) == pytest.approx(1.0)


def test_weights_are_detached():
    losses = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    w = sample_weights(losses * 2)
    assert not w.requires_grad
    (w * losses).sum().backward()
    close(losses.grad, w.tolist())  # d/dl sum w_i l_i = w: no gradient through w


@pytest.mark.parametrize("cap", [1.0, 1.1, 1.5, 2.0])
def test_cap_is_exact_and_preserves_mass(cap):
    losses = torch.linspace(0.0, 5.0, 10)
    free = sample_weights(losses, "extremes", r=0.2)
    w = sample_weights(losses, "extremes", r=0.2, cap=cap)
    assert float(free.max()) * 10 > cap  # the cap is active
    assert float(w.max()) <= cap / 10 + 1e-7
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-6)
    # uncapped samples keep their softmax proportions (KL projection)
    below = w < cap / 10 - 1e-7
    if int(below.sum()) > 1:
        ratio = w[below] / free[below]
        assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-4)


def test_cap_by_hand_and_noop():
    # softmax [0.7, 0.2, 0.1], cap 1.5 -> limit 0.5: excess 0.2 goes to the others 2:1
    p = torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64)
    from mixweight.weighting.weights import _capped_softmax

    close(_capped_softmax(torch.log(p), 1.5), [0.5, 0.2 + 0.2 * 2 / 3, 0.1 + 0.2 / 3])
    # tiny r: mass beyond the cap goes to the next-best logits even though their softmax underflowed
    w = sample_weights(torch.tensor([1.0, 2.0, 3.0, 4.0]), "extremes", r=1e-8, cap=1.0)
    close(w, [0.25] * 4)
    assert torch.equal(sample_weights(LOSSES, cap=None), sample_weights(LOSSES))
    assert torch.equal(sample_weights(LOSSES, cap=2.0), sample_weights(LOSSES))  # max w*N < 2


def test_weight_stats():
    s = weight_stats(torch.full((4,), 0.25))
    assert s == pytest.approx({"max_weight_x_n": 1.0, "ess_fraction": 1.0, "entropy": math.log(4)})
    s = weight_stats(torch.tensor([0.5, 0.5, 0.0, 0.0]), torch.tensor([1.0, 2.0, NAN, INF]))
    assert s == pytest.approx({"max_weight_x_n": 2.0, "ess_fraction": 0.5, "entropy": math.log(2), "nonfinite": 2.0})
    assert weight_stats(torch.zeros(3))["ess_fraction"] == 0.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"strategy": "linuper"}, "did you mean 'linupper'"),
        ({"strategy": "bogus"}, "valid: extremes, linupper"),
        ({"schedule": 0.0}, "r must be a number > 0"),
        ({"schedule": -1.0}, "r must be a number > 0"),
        ({"schedule": NAN}, "r must be a number > 0"),
        ({"cap": 0.5}, "cap must be >= 1"),
    ],
)
def test_bad_arguments(kwargs, match):
    """The library checks its arguments once, at the constructor; sample_weights assumes them valid."""
    with pytest.raises(ValueError, match=f"(?i){match}"):
        SampleWeighting(**kwargs)
    if "strategy" in kwargs:  # a name is looked up wherever it is used
        with pytest.raises(ValueError, match=f"(?i){match}"):
            sample_weights(LOSSES, kwargs["strategy"])


def test_schedule_values():
    assert RSchedule().r_at(0) == 0.4  # W = 0: target r from the start
    step = RSchedule("step", r=0.4, r_start=100.0, warmup_steps=10)
    assert [step.r_at(t) for t in (0, 9, 10, 50)] == [100.0, 100.0, 0.4, 0.4]
    lin = RSchedule("linear", r=1.0, r_start=11.0, warmup_steps=10)
    assert [lin.r_at(t) for t in (0, 5, 9, 10, 99)] == pytest.approx([11.0, 6.0, 2.0, 1.0, 1.0])
    cos = RSchedule("cosine", r=1.0, r_start=11.0, warmup_steps=10)
    assert [cos.r_at(t) for t in (0, 5, 10, 20)] == pytest.approx([11.0, 6.0, 1.0, 1.0])
    assert cos.r_at(2) == pytest.approx(1.0 + 10.0 * 0.5 * (1 + math.cos(math.pi * 0.2)))
    burn = RSchedule("burnin", r=0.4, warmup_steps=3)
    assert [burn.r_at(t) for t in (0, 2, 3)] == [None, None, 0.4]
    assert RSchedule("burnin", warmup_steps=0).r_at(0) == 0.4


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"kind": "cosin"}, "did you mean 'cosine'"),
        ({"r": 0}, "r must be a number > 0"),
        ({"r_start": -1.0}, "r_start must be a number > 0"),
        ({"warmup_steps": -1}, "warmup_steps must be an integer >= 0"),
        ({"warmup_steps": 2.5}, "warmup_steps must be an integer >= 0"),
    ],
)
def test_schedule_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=f"(?i){match}"):
        RSchedule(**kwargs)
    with pytest.raises(ValueError, match="step must be >= 0"):
        RSchedule().r_at(-1)


def test_sample_weighting_object():
    bad = torch.tensor([1.0, NAN, 2.0, 3.0])
    burn = SampleWeighting("linupper", RSchedule("burnin", r=0.4, warmup_steps=5), cap=2.0)
    assert not burn.is_uniform
    close(burn.weights(bad, step=0), [1 / 3, 0.0, 1 / 3, 1 / 3])
    close(burn.weights(bad, step=5), sample_weights(bad, "linupper", r=0.4, cap=2.0).tolist())
    step = SampleWeighting("quadratic", RSchedule("step", r=0.4, warmup_steps=2))
    close(step.weights(LOSSES, 0), sample_weights(LOSSES, "quadratic", r=100.0).tolist())
    for name in ("uniform", "none", "None"):
        sw = SampleWeighting(name, 0.4)
        assert sw.is_uniform and sw.r_at(100) is None
        close(sw.weights(bad, 100), [1 / 3, 0.0, 1 / 3, 1 / 3])
    assert SampleWeighting("uniform").weights(torch.tensor([NAN]), 0).tolist() == [0.0]
    close(SampleWeighting("extremes", 0.4).weights(LOSSES, 0), sample_weights(LOSSES, "extremes").tolist())
    with pytest.raises(ValueError, match="(?i)did you mean 'extremes'"):
        SampleWeighting("extreme")
    with pytest.raises(ValueError, match="cap must be >= 1"):
        SampleWeighting(cap=0.9)
