"""The online mixers: their state, their per-step update and the mixture each phase samples.

`ODMMixer` (online:odm) and `DoReMiMixer` (online:doremi); `mixweight.train.online` builds them and
wires them into the loop. docs/algorithms.md section 6 has the formulas and their sources.

Each phase records what its mixture was computed from (`signal`, `observed` = steps observed when
it was chosen, DoReMi's `alpha`), so `replay_phases(artifact)` recomputes every phase's mixture from
the run's `domain_weights.json` alone (`mixweight weights verify`). The state (JSON) goes into every
checkpoint; a state without its form marker was written by an earlier mixweight whose rule this
version changed, and is refused with one line rather than continued under another rule.
"""

from __future__ import annotations

import torch

import mixweight
from mixweight.core.artifact import DomainWeights
from mixweight.errors import MixweightError
from mixweight.sampling.schedule import Phase
from mixweight.train.step import StepResult
from mixweight.weighting.domain_update import (
    domain_means,
    doremi_update,
    exp3_exploration,
    exp3_policy,
    exp3_rewards,
    odm_smoothed_policy,
    odm_smoothed_rewards,
    toward_prior,
)

PREFIX = "online:"
ODM_REWARDS = ("smoothed", "exp3")
DECAYING = "min(1/k, sqrt(ln k / (k t)))"  # ODM's recorded `exploration` when it decays (a number when fixed)
EARLIER = (
    "the run cannot continue under another rule: start it afresh in a new --out (its domain_weights.json still "
    "replays as a static schedule with --domain-weights-every)"
)


def state_vector(values, k: int, where: str) -> torch.Tensor:
    if not isinstance(values, list) or len(values) != k or not all(isinstance(v, (int, float)) for v in values):
        raise ValueError(f"{where} must be {k} numbers, got {values!r}")
    return torch.tensor(values, dtype=torch.float64)


def phase_average(starts: list[int], weights: torch.Tensor, steps: int) -> torch.Tensor:
    """The phases' proportions [P, k] averaged over steps 0..steps-1, each phase weighted by its trained steps."""
    end = max(steps, 1)
    total = torch.zeros(weights.shape[1], dtype=torch.float64)
    for i, start in enumerate(starts):
        stop = starts[i + 1] if i + 1 < len(starts) else end
        total += max(min(stop, end) - start, 0) * weights[i]
    return weights[0].clone() if total.sum() <= 0 else total / total.sum()


class OnlineMixer:
    """Shared by the methods: the phases so far, the artifact, the checkpoint state.

    Domains whose prior weight is 0 (a DoGE artifact's held-out targets) stay at 0 and out of the
    update; the method runs over the `active` domains only, centred on the prior renormalized over them.
    """

    name = "online"

    def __init__(self, domains: list[str], prior: list[float], every: int):
        self.domains, self.every = list(domains), int(every)
        self.prior = torch.tensor(prior, dtype=torch.float64)
        self.active = self.prior > 0
        self.base = self.prior[self.active] / self.prior[self.active].sum()  # the prior over the active domains
        self.current = self.prior.clone()  # the proportions the loader samples now
        self.steps = 0  # optimizer steps observed
        self.phases: list[dict] = [{"start_step": 0, "weights": self.prior.tolist(), "signal": None}]

    # the loop's calls
    def phase_due(self, step: int) -> bool:
        return step > 0 and step % self.every == 0 and self.phases[-1]["start_step"] < step

    def start_phase(self, step: int) -> Phase:
        """The next phase, from step `step` on: the method's current proportions."""
        weights = torch.zeros_like(self.prior)
        weights[self.active] = self.policy()
        weights = weights / weights.sum()
        self.current = weights
        phase = {"start_step": step, "weights": weights.tolist(), "signal": self.signal(), "observed": self.steps}
        self.phases.append({**phase, **self.phase_state()})
        return Phase(step, dict(zip(self.domains, weights.tolist())))

    def loader_phases(self) -> list[Phase]:
        return [Phase(p["start_step"], dict(zip(self.domains, p["weights"]))) for p in self.phases]

    def observe(self, step: int, result: StepResult, micro_batches) -> None:
        raise NotImplementedError

    def policy(self) -> torch.Tensor:
        """The next phase's proportions over the active domains."""
        raise NotImplementedError

    def signal(self) -> list[float]:
        raise NotImplementedError

    def phase_state(self) -> dict:
        """What a phase records beside its signal so that its mixture can be recomputed (`replay_phases`)."""
        return {}

    def options(self) -> dict:
        return {}

    # what is recorded
    def step_metrics(self) -> dict:
        last = self.phases[-1]
        return {
            "online_mixing": {
                "method": self.name,
                "phase": len(self.phases) - 1,
                "phase_start": last["start_step"],
                "weights": dict(zip(self.domains, last["weights"])),
                "signal": dict(zip(self.domains, self.signal())),
            }
        }

    def average_weights(self, total_steps: int) -> list[float]:
        """The proportions averaged over the steps trained so far (each phase weighted by its steps)."""
        weights = torch.tensor([p["weights"] for p in self.phases], dtype=torch.float64)
        return phase_average([p["start_step"] for p in self.phases], weights, min(self.steps, total_steps)).tolist()

    def artifact(self, manifest, seed: int, total_steps: int) -> DomainWeights:
        return DomainWeights(
            domains=list(self.domains),
            weights=self.average_weights(total_steps),
            last_weights=list(self.phases[-1]["weights"]),
            method={
                "name": f"{PREFIX}{self.name}",
                "mixing_every": self.every,
                "prior": self.prior.tolist(),
                "steps": self.steps,
                "average": "proportions averaged over the trained steps (each phase weighted by its length)",
                "replay": f"--domain-weights THIS_FILE --domain-weights-every {self.every} follows the trajectory",
                **self.options(),
            },
            trajectory=[
                {"step": p["start_step"], **{k: v for k, v in p.items() if k != "start_step"}} for p in self.phases
            ],
            provenance={
                "seed": seed,
                "tokenizer_fingerprint": manifest.tokenizer.get("fingerprint"),
                "domain_token_counts": manifest.train_tokens(),
                "corpus_config_hash": manifest.config_hash,
                "mixweight_version": mixweight.__version__,
            },
        )

    # checkpoint state (JSON)
    def state_dict(self) -> dict:
        return {
            "method": self.name,
            "domains": list(self.domains),
            "every": self.every,
            "steps": self.steps,
            "current": self.current.tolist(),
            "phases": [dict(p) for p in self.phases],
            **self._method_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("method") != self.name or state.get("domains") != self.domains:
            raise ValueError(
                f"online mixing state is for {state.get('method')!r} over {state.get('domains')}, "
                f"this run mixes {self.name!r} over {self.domains}"
            )
        self._check_form(state)
        k = len(self.domains)
        self.steps = int(state["steps"])
        self.current = state_vector(state["current"], k, "online mixing 'current'")
        phases = state["phases"]
        if not isinstance(phases, list) or not phases or phases[0].get("start_step") != 0:
            raise ValueError("online mixing 'phases' must be a list starting at step 0")
        self.phases = [self._load_phase(p, k) for p in phases]
        self._load_method_state(state)

    def _load_phase(self, phase: dict, k: int) -> dict:
        loaded = {
            "start_step": int(phase["start_step"]),
            "weights": state_vector(phase["weights"], k, "phase weights").tolist(),
            "signal": phase.get("signal"),
        }
        if phase["start_step"] > 0:
            loaded["observed"] = int(phase["observed"])
            for key in self.phase_state():
                loaded[key] = state_vector(phase[key], k, f"phase {key!r}").tolist()
        return loaded

    def _check_form(self, state: dict) -> None:
        """Refuse a state from before this version's rule (MixweightError: one line, not 'damaged')."""

    def _method_state(self) -> dict:
        return {}

    def _load_method_state(self, state: dict) -> None:
        pass


class ODMMixer(OnlineMixer):
    """ODM (Albalak et al., 2023) as its official code computes it, over the domains of each mixed batch.

    `smoothed` (default; the code's smoothed-mean updater, which its README names the paper's implementation):
    R_i <- alpha R_i + (1 - alpha) exp(L_i), policy linear in R. `exp3` (its EXP3 updater): cumulative
    importance-weighted loss / 10, exponential weights. Both with the decaying exploration eps_t, centred on
    the prior. docs/algorithms.md section 6.2."""

    name = "odm"

    def __init__(self, domains, prior, every, alpha: float = 0.9, exploration: float | None = None, reward="smoothed"):
        super().__init__(domains, prior, every)
        if reward not in ODM_REWARDS:
            raise MixweightError(f"train: 'odm_reward' must be one of {', '.join(ODM_REWARDS)}, got {reward!r}")
        self.alpha, self.fixed, self.reward = float(alpha), exploration, reward
        k = int(self.active.sum())
        if exploration is not None and not 0 < exploration <= 1.0 / k:
            raise MixweightError(
                f"train: 'odm_exploration' must be in (0, 1/k] = (0, {1.0 / k:.6g}] for the {k} sampled domains "
                f"(the exploration mass k * epsilon cannot exceed 1), got {exploration}"
            )
        self.rewards = torch.zeros(len(self.domains), dtype=torch.float64)

    def observe(self, step: int, result: StepResult, micro_batches) -> None:
        losses = result.losses.detach().to(torch.float64)
        ones, k = torch.ones_like(losses), len(self.domains)
        means, present = domain_means(losses, ones, result.domains, torch.isfinite(losses), k)
        present = present & self.active
        if self.reward == "smoothed":
            self.rewards = odm_smoothed_rewards(self.rewards, means, present, self.alpha)
        else:  # the samples each domain had in the step, against the N pi_i expected
            counts = torch.bincount(result.domains.long().cpu(), minlength=k).to(torch.float64)
            counts = torch.where(present, counts, torch.zeros_like(counts))
            self.rewards = exp3_rewards(self.rewards, means, counts, losses.numel(), self.current.clamp(min=1e-300))
        self.steps += 1

    def exploration(self, t: int) -> float:
        return exp3_exploration(int(self.active.sum()), t, self.fixed)

    def policy(self) -> torch.Tensor:
        rewards, t = self.rewards[self.active], self.steps
        if self.reward == "smoothed":
            return odm_smoothed_policy(rewards, self.base, self.exploration(t))
        return exp3_policy(rewards, self.base, self.exploration(t - 1), self.exploration(t))

    def signal(self) -> list[float]:
        return self.rewards.tolist()

    def options(self) -> dict:
        signal = "smoothed exp(loss) R" if self.reward == "smoothed" else "cumulative importance-weighted loss / 10 R"
        return {
            "reward": self.reward,
            "alpha": self.alpha,
            "exploration": DECAYING if self.fixed is None else self.fixed,
            "signal": f"{signal} at the phase's start",
        }

    def step_metrics(self) -> dict:
        metrics = super().step_metrics()
        metrics["online_mixing"]["exploration"] = self.exploration(self.steps)
        return metrics

    def _check_form(self, state: dict) -> None:
        if "reward" not in state:
            raise MixweightError(
                "its online:odm state comes from an earlier mixweight, whose reward (smoothed loss / pi, a policy "
                f"that flattens back to the prior) this version replaced by the official code's; {EARLIER}"
            )
        if state["reward"] != self.reward:
            raise ValueError(f"online:odm state has reward {state['reward']!r}, this run {self.reward!r}")

    def _method_state(self) -> dict:
        return {"reward": self.reward, "rewards": self.rewards.tolist()}

    def _load_method_state(self, state: dict) -> None:
        self.rewards = state_vector(state["rewards"], len(self.domains), "online mixing 'rewards'")


class DoReMiMixer(OnlineMixer):
    """Online DoReMi: alpha <- doremi_update(alpha, lambda) every step on the excess loss; each phase samples
    (1 - gamma) alpha + gamma prior, so no domain drops out of the batches and freezes its excess.

    docs/algorithms.md section 6.3."""

    name = "doremi"

    def __init__(
        self, domains, prior, every, excess, eta: float = 1.0, smoothing: float = 1e-3, exploration: float = 0.1
    ):
        super().__init__(domains, prior, every)
        self.signal_source, self.eta, self.smoothing = excess, float(eta), float(smoothing)
        self.gamma = float(exploration)
        self.alpha = self.prior.clone()
        self.excess = torch.zeros(len(self.domains), dtype=torch.float64)  # lambda_0 = 0 (algorithms.md 2.5)

    def update(self, signal: torch.Tensor, losses: torch.Tensor, domains: torch.Tensor) -> None:
        """One step's update from the gathered [N, 2] signal (the offline proxy's arithmetic)."""
        excess_sum, counts = signal[:, 0], signal[:, 1]
        valid = torch.isfinite(losses.detach().cpu()) & torch.isfinite(excess_sum) & (counts > 0)
        measured, present = domain_means(excess_sum, counts, domains.cpu(), valid, len(self.domains))
        self.excess = torch.where(present, measured, self.excess)
        active = self.active
        alpha = torch.zeros_like(self.alpha)
        alpha[active] = doremi_update(self.alpha[active], self.excess[active], self.eta, self.smoothing)
        self.alpha = alpha

    def observe(self, step: int, result: StepResult, micro_batches) -> None:
        signal = self.signal_source.last_signal
        if signal is None:
            raise MixweightError("train: online:doremi: the step produced no excess-loss signal")
        self.update(signal, result.losses, result.domains)
        self.signal_source.last_signal = None
        self.steps += 1

    def policy(self) -> torch.Tensor:
        return toward_prior(self.alpha[self.active], self.base, self.gamma)

    def signal(self) -> list[float]:
        return self.excess.tolist()

    def phase_state(self) -> dict:
        return {"alpha": self.alpha.tolist()}

    def options(self) -> dict:
        return {
            "eta": self.eta,
            "smoothing": self.smoothing,
            "exploration": self.gamma,
            "signal": "excess loss lambda at the phase's start; alpha: DoReMi's weights, sampled as "
            "(1 - exploration) alpha + exploration prior",
        }

    def _check_form(self, state: dict) -> None:
        if "exploration" not in state:
            raise MixweightError(
                "its online:doremi state comes from an earlier mixweight, which sampled alpha itself (a domain near "
                f"alpha 0 was never observed again); this version mixes in an exploration floor; {EARLIER}"
            )
        if float(state["exploration"]) != self.gamma:
            raise ValueError(f"online:doremi state has exploration {state['exploration']}, this run {self.gamma}")

    def _method_state(self) -> dict:
        return {"exploration": self.gamma, "alpha": self.alpha.tolist(), "excess": self.excess.tolist()}

    def _load_method_state(self, state: dict) -> None:
        k = len(self.domains)
        self.alpha = state_vector(state["alpha"], k, "online mixing 'alpha'")
        self.excess = state_vector(state["excess"], k, "online mixing 'excess'")


MIXERS = {"odm": ODMMixer, "doremi": DoReMiMixer}
