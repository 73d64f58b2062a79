"""The online mixers against oracles written from ODM's official code and the DoReMi paper, not from mixweight.

Each oracle is a small float64 implementation in plain Python (math, dicts, `random`):

- `OfficialSmoothedMean`, `OfficialExp3`: the group updates of alon-albalak/online-data-mixing
  (megatron/data/data_sampling_utils.py, SmoothedMeanWeightUpdater and Exp3WeightUpdater), called as its
  mixed-minibatch training loop calls them (after step t, with iteration = t, on the domains present);
- `doremi_oracle`: DoReMi's Algorithm 1 step (Xie et al. 2023) and the sampled mixture (1 - g) alpha + g prior.

Also: ODM's policy separates domains of fixed, different losses and stays separated over 10k steps; the
exploration is centred on the prior; the EXP3 reward's importance weight is unbiased in mixed batches; online
DoReMi's exploration floor keeps a collapsed domain observed.
"""

from __future__ import annotations

import math
import random

import pytest
import torch

from mixweight.errors import MixweightError
from mixweight.train.odm import ODMMixer
from mixweight.train.online_doremi import DoReMiMixer
from mixweight.train.step import StepResult


def _result(losses: list[float], domains: list[int]) -> StepResult:
    losses_t = torch.tensor(losses, dtype=torch.float64)
    return StepResult(losses_t, torch.tensor(domains), torch.full_like(losses_t, 1 / len(losses)), 0.0, len(losses))


def _weights(phase, names) -> list[float]:
    return [phase.weights[n] for n in names]


class OfficialSmoothedMean:
    """SmoothedMeanWeightUpdater.group_update: R <- s R + (1 - s) exp(loss); weights R eps_prev scale + eps."""

    def __init__(self, names, weights, smoothing):
        self.names, self.k, self.s = list(names), len(names), smoothing
        self.reward = {n: 0.0 for n in names}
        self.prob = {n: w / sum(weights) for n, w in zip(names, weights)}
        self.eps, self.prev_eps = 1 / self.k, None

    def group_update(self, names, rewards, iteration):
        self.prev_eps = self.eps
        self.eps = min(1 / self.k, math.sqrt(math.log(self.k) / (self.k * iteration)))
        for name, reward in zip(names, rewards):
            self.reward[name] = self.s * self.reward[name] + (1 - self.s) * math.exp(reward)
        total = sum(r * self.prev_eps for r in self.reward.values())
        scale = (1 - self.k * self.eps) / total
        weights = {n: self.reward[n] * self.prev_eps * scale + self.eps for n in self.names}
        self.prob = {n: w / sum(weights.values()) for n, w in weights.items()}
        return [self.prob[n] for n in self.names]


class OfficialExp3:
    """Exp3WeightUpdater.group_update: R += (loss / 10) / p; weights exp(R eps_prev) scale + eps."""

    def __init__(self, names, weights):
        self.names, self.k = list(names), len(names)
        self.reward = {n: 0.0 for n in names}
        self.prob = {n: w / sum(weights) for n, w in zip(names, weights)}
        self.eps, self.prev_eps = 1 / self.k, None

    def group_update(self, names, rewards, iteration):
        self.prev_eps = self.eps
        self.eps = min(1 / self.k, math.sqrt(math.log(self.k) / (self.k * iteration)))
        for name, reward in zip(names, rewards):
            self.reward[name] += (reward / 10) / self.prob[name]
        total = sum(math.exp(r * self.prev_eps) for r in self.reward.values())
        scale = (1 - self.k * self.eps) / total
        weights = {n: math.exp(self.reward[n] * self.prev_eps) * scale + self.eps for n in self.names}
        self.prob = {n: w / sum(weights.values()) for n, w in weights.items()}
        return [self.prob[n] for n in self.names]


NAMES = ["a", "b", "c", "d"]


def test_odm_default_is_the_official_smoothed_mean_update_step_by_step():
    """Uniform prior, a phase every step, some domains absent from some steps: the official probabilities."""
    rng = random.Random(0)
    mixer = ODMMixer(NAMES, [0.25] * 4, every=1, alpha=0.5)
    official = OfficialSmoothedMean(NAMES, [0.25] * 4, smoothing=0.5)
    for step in range(60):
        domains = [rng.randrange(4) for _ in range(6)]  # a mixed batch of 6 samples: some domains absent
        losses = [rng.uniform(1.0, 6.0) for _ in domains]
        mixer.observe(step, _result(losses, domains), None)
        present = sorted(set(domains))
        means = [sum(x for x, d in zip(losses, domains) if d == i) / domains.count(i) for i in present]
        expected = official.group_update([NAMES[i] for i in present], means, iteration=step + 1)
        got = _weights(mixer.start_phase(step + 1), NAMES)
        assert got == pytest.approx(expected, rel=1e-12, abs=1e-15), step


def test_odm_exp3_is_the_official_exp3_update_when_each_step_holds_one_domain():
    """The paper's setting (one domain per step): the importance weight n_i / (N pi_i) is the official 1 / pi_i."""
    rng = random.Random(1)
    mixer = ODMMixer(NAMES, [0.25] * 4, every=1, reward="exp3")
    official = OfficialExp3(NAMES, [0.25] * 4)
    for step in range(80):
        domain = rng.choices(range(4), weights=[official.prob[n] for n in NAMES])[0]
        losses = [rng.uniform(2.0, 5.0) for _ in range(4)]  # four samples, all from that domain
        mixer.observe(step, _result(losses, [domain] * 4), None)
        expected = official.group_update([NAMES[domain]], [sum(losses) / 4], iteration=step + 1)
        got = _weights(mixer.start_phase(step + 1), NAMES)
        assert got == pytest.approx(expected, rel=1e-12, abs=1e-15), step


def _fixed_loss_run(reward: str, steps: int, every: int, seed: int = 0) -> list[tuple[int, list[float]]]:
    """k = 7 domains of fixed losses 2.0 .. 5.0 nats, batches of 32 drawn from the current phase."""
    names = [f"d{i}" for i in range(7)]
    loss = [2.0 + 0.5 * i for i in range(7)]
    rng = random.Random(seed)
    mixer = ODMMixer(names, [1 / 7] * 7, every=every, reward=reward)
    weights = [1 / 7] * 7
    phases = []
    for step in range(steps):
        if mixer.phase_due(step):
            weights = _weights(mixer.start_phase(step), names)
            phases.append((step, weights))
        domains = rng.choices(range(7), weights=weights, k=32)
        mixer.observe(step, _result([loss[d] for d in domains], domains), None)
    return phases


@pytest.mark.parametrize("reward", ["smoothed", "exp3"])
def test_over_10k_steps_the_policy_separates_the_domains_and_stays_separated(reward):
    """The earlier form (smoothed loss / pi inside eps_t R) flattened to max/min 1.10 at 10k steps; both of the
    official code's updaters separate domains whose losses differ, and keep them apart as eps_t decays."""
    phases = _fixed_loss_run(reward, steps=10_000, every=10)
    ratios = {step: max(w) / min(w) for step, w in phases}
    assert all(max(w) == w[-1] for step, w in phases if step >= 100)  # the highest loss is sampled most
    if reward == "smoothed":  # and every domain in the order of its loss
        assert all(w == sorted(w) for step, w in phases if step >= 100)
    assert ratios[1000] > 8 and ratios[9990] > 15
    assert min(r for step, r in ratios.items() if step >= 1000) > 8  # and it never flattens back
    assert ratios[9990] >= ratios[1000]
    if reward == "smoothed":  # the linear policy tends to exp(L_i) / exp(L_j): e^3 = 20.1 between 5 and 2 nats
        assert ratios[9990] < math.exp(3.0)


@pytest.mark.parametrize("reward", ["smoothed", "exp3"])
def test_the_exploration_is_centred_on_the_prior(reward):
    """Equal losses keep every phase at the prior, also while eps = 1/k (t <= k ln k); the earlier form went
    prior -> uniform -> back toward the prior. Unequal losses: every domain keeps k eps_t prior_i."""
    prior = [0.5, 0.25, 0.125, 0.125]
    batch = [0, 0, 0, 0, 1, 1, 2, 3]  # exactly N pi_i samples of each domain
    mixer = ODMMixer(NAMES, prior, every=1, reward=reward)
    for step in range(40):
        mixer.observe(step, _result([3.0] * 8, batch), None)
        assert _weights(mixer.start_phase(step + 1), NAMES) == pytest.approx(prior, rel=1e-12), step
    mixer = ODMMixer(NAMES, prior, every=1, reward=reward)
    for step in range(40):
        mixer.observe(step, _result([1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 6.0, 4.0], batch), None)
        weights = _weights(mixer.start_phase(step + 1), NAMES)
        floor = [4 * mixer.exploration(step + 1) * p for p in prior]
        assert all(w >= f - 1e-15 for w, f in zip(weights, floor)), step
        if step + 1 <= 4 * math.log(4):  # eps_t = 1/k: the whole mass is exploration, the prior itself
            assert weights == pytest.approx(prior, rel=1e-12)
    assert weights[2] > prior[2]  # the highest loss gained


def test_the_exp3_importance_weight_is_unbiased_in_mixed_batches():
    """A domain sampled with pi in a batch of N is present with probability 1 - (1 - pi)^N, not pi: the official
    L / pi per present step over-rewards rare domains; n_i / (N pi_i) L has expectation L whatever pi."""
    prior, losses, n, steps = [0.7, 0.2, 0.08, 0.02], [3.0, 3.0, 3.0, 3.0], 16, 6000
    mixer = ODMMixer(NAMES, prior, every=10**9, exploration=0.25, reward="exp3")  # k eps = 1: pi stays the prior
    rng = random.Random(3)
    official = [0.0] * 4
    for step in range(steps):
        domains = rng.choices(range(4), weights=prior, k=n)
        mixer.observe(step, _result([losses[d] for d in domains], domains), None)
        for i in set(domains):
            official[i] += losses[i] / 10 / prior[i]
    for i, p in enumerate(prior):
        per_step = mixer.rewards[i].item() / steps
        se = losses[i] / 10 * math.sqrt(n * p * (1 - p)) / (n * p) / math.sqrt(steps)
        assert abs(per_step - losses[i] / 10) < 4 * se, (i, per_step)
        present = 1 - (1 - p) ** n
        assert official[i] / steps == pytest.approx(losses[i] / 10 * present / p, rel=0.05)
    assert official[3] / steps > 10 * losses[3] / 10  # the rarest domain: 13.8x its loss


def doremi_oracle(alpha, excess, eta, c):
    """Xie et al. 2023, Algorithm 1: alpha' = (1 - c) softmax(log alpha + eta lambda) + c / k."""
    logits = [math.log(a) + eta * x for a, x in zip(alpha, excess)]
    top = max(logits)
    z = sum(math.exp(v - top) for v in logits)
    return [(1 - c) * math.exp(v - top) / z + c / len(alpha) for v in logits]


def test_online_doremi_samples_its_alpha_mixed_with_the_prior_as_the_oracle():
    prior = [0.4, 0.3, 0.2, 0.1]
    mixer = DoReMiMixer(NAMES, prior, every=5, eta=0.5, smoothing=0.01, exploration=0.2)
    alpha, excess = list(prior), [0.0] * 4
    rng = random.Random(4)
    for step in range(30):
        if mixer.phase_due(step):
            mixture = [0.8 * a + 0.2 * p for a, p in zip(alpha, prior)]
            assert _weights(mixer.start_phase(step), NAMES) == pytest.approx(mixture, rel=1e-12)
        domains = [rng.randrange(4) for _ in range(8)]
        tokens = [rng.randint(10, 60) for _ in domains]
        sums = [rng.uniform(0, 3) * t for t in tokens]
        signal = torch.tensor([sums, tokens], dtype=torch.float64).t()
        mixer.update(signal, torch.ones(8), torch.tensor(domains))
        for i in set(domains):  # the token average of the present domains' excess; the absent keep theirs
            excess[i] = sum(s for s, d in zip(sums, domains) if d == i) / sum(
                t for t, d in zip(tokens, domains) if d == i
            )
        alpha = doremi_oracle(alpha, excess, 0.5, 0.01)
        assert mixer.alpha.tolist() == pytest.approx(alpha, rel=1e-12)


def _collapse_run(gamma: float, seed: int) -> tuple[DoReMiMixer, int]:
    """Domain 'd' has no excess for 100 steps (its alpha collapses to the floor c/k), then 2 nats from step 100 on.
    Returns the mixer after 300 steps and how many steps after step 100 a batch first held 'd' (200: never)."""
    mixer = DoReMiMixer(NAMES, [0.25] * 4, every=10, eta=1.0, smoothing=1e-3, exploration=gamma)
    rng = random.Random(seed)
    weights, delay = [0.25] * 4, 200
    for step in range(300):
        if mixer.phase_due(step):
            weights = _weights(mixer.start_phase(step), NAMES)
        domains = rng.choices(range(4), weights=weights, k=16)
        true_excess = [1.0, 1.0, 1.0, 0.0 if step < 100 else 2.0]
        signal = torch.tensor([[true_excess[d] * 50, 50.0] for d in domains], dtype=torch.float64).reshape(-1, 2)
        mixer.update(signal, torch.ones(len(domains)), torch.tensor(domains))
        if delay == 200 and step >= 100 and 3 in domains:
            delay = step - 100
    return mixer, delay


def test_online_doremis_exploration_floor_keeps_a_collapsed_domain_observed():
    """Sampling alpha itself (exploration 0), a domain at the smoothing floor c/k = 2.5e-4 is drawn about once
    in 250 steps of 16 samples, so its excess stays frozen at its last value long after it changed; with the
    floor (0.1: 0.025 each) it is drawn within a few steps and DoReMi follows its new excess."""
    runs = {gamma: [_collapse_run(gamma, seed) for seed in range(10)] for gamma in (0.0, 0.1)}
    collapsed = {gamma: [m.phases[10]["weights"][3] for m, _ in found] for gamma, found in runs.items()}  # step 100
    assert max(collapsed[0.0]) < 1e-3 and min(collapsed[0.1]) >= 0.1 * 0.25
    delays = {gamma: sum(d for _, d in found) / len(found) for gamma, found in runs.items()}
    assert delays[0.0] > 50 and delays[0.1] < 10  # expected 1 / (1 - (1 - w)^16): about 250 and 2.5 steps
    assert all(m.excess[3].item() == 2.0 and m.phases[-1]["weights"][3] > 0.5 for m, _ in runs[0.1])


def test_a_bad_odm_reward_is_refused():
    with pytest.raises(MixweightError, match="'mixing.odm.reward' must be one of smoothed, exp3"):
        ODMMixer(NAMES, [0.25] * 4, every=1, reward="paper")
