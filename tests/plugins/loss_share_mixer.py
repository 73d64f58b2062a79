"""A test-only online mixer: docs/design.md's example ("Adding an online mixer"), word for word.

Importing this module registers `online:loss_share`; no mixweight file names it.
"""

from dataclasses import dataclass

import torch

from mixweight.core.config import option, require
from mixweight.train.mixers import OnlineMixer, register_mixer, state_vector
from mixweight.weighting.domain_update import domain_means


@dataclass
class LossShareOptions:
    """`mixing: {loss_share: {...}}`: flags --mixing.loss-share.KEY."""

    power: float = option(1.0, "online:loss_share: sample in proportion to the mean loss to this power")

    def validate(self):
        require(self.power > 0, f"train: 'mixing.loss_share.power' must be > 0, got {self.power}")


@register_mixer
class LossShareMixer(OnlineMixer):
    """online:loss_share: each phase samples the domains in proportion to their mean training loss so far."""

    name = "loss_share"
    Options = LossShareOptions
    RECORDED = ("power",)

    def __init__(self, domains, prior, every, power=1.0):
        super().__init__(domains, prior, every)
        self.power = float(power)
        self.totals = torch.zeros(len(self.domains), dtype=torch.float64)  # sum of the steps' domain means
        self.counts = torch.zeros(len(self.domains), dtype=torch.float64)  # steps that measured each domain

    @classmethod
    def from_config(cls, config, corpus, prior):
        return cls(corpus.manifest.domains, prior, config.mixing.every, config.mixing.options(cls.name).power)

    @classmethod
    def from_record(cls, method, domains, prior, every):
        return cls(domains, prior, every, method["power"])

    def observe(self, step, result, micro_batches):
        losses = result.losses.to(torch.float64)
        finite = torch.isfinite(losses)
        means, present = domain_means(losses, torch.ones_like(losses), result.domains, finite, len(self.domains))
        self.totals += torch.where(present, means, torch.zeros_like(means))
        self.counts += present.to(torch.float64)
        self.steps += 1

    def signal(self):
        return (self.totals / self.counts.clamp(min=1)).tolist()  # each domain's mean loss so far

    def policy(self):
        mean = torch.tensor(self.signal(), dtype=torch.float64)[self.active] ** self.power
        return mean / mean.sum() if bool((mean > 0).all()) else self.base  # the prior until all are measured

    def options(self):
        return {"power": self.power}

    def restore_phase(self, vector):
        self.totals, self.counts = vector("signal"), torch.ones(len(self.domains), dtype=torch.float64)

    def _method_state(self):
        return {"totals": self.totals.tolist(), "counts": self.counts.tolist()}

    def _load_method_state(self, state):
        k = len(self.domains)
        self.totals = state_vector(state["totals"], k, "online mixing 'totals'")
        self.counts = state_vector(state["counts"], k, "online mixing 'counts'")
