"""The `mixing:` block of a run's config: online domain mixing's shared options and each online mixer's own.

    domain_weights: online:odm
    mixing: {every: 50, prior: uniform, odm: {reward: exp3}}

`every` and `prior` serve every online mixer; each mixer's options are its `Options` class (odm.py,
online_doremi.py, a plug-in's), under the mixer's name, so a registered mixer brings its own block.
The checks that need the mixture (which mixer, whether options are set for one that is not used) are
the online module's (`check_online_config`), called by TrainConfig.validate.
"""

from __future__ import annotations

from dataclasses import dataclass

from mixweight.core.config import inline_blocks, option, require


def mixer_options() -> dict[str, type]:
    """{mixer name: its Options class} of every registered online mixer that takes options."""
    from mixweight.train.mixers import mixers

    return {name: cls.Options for name, cls in mixers().items() if cls.Options is not None}


@dataclass
class MixingConfig:
    every: int = option(
        0, "online domain weights: steps per phase; the mixture is re-chosen every N steps (needs online:...)"
    )
    prior: str = option(
        "uniform", "online domain weights: the first phase's mixture: uniform, natural or a domain_weights.json"
    )
    mixers: dict = inline_blocks(mixer_options, "each online mixer's options, under its name (mixing.odm.reward)")

    def options(self, name: str):
        """The options of online mixer `name` (its Options class)."""
        return self.mixers[name]

    def validate(self) -> None:
        require(self.every >= 0, f"train: 'mixing.every' must be >= 0, got {self.every}")
        for options in self.mixers.values():
            options.validate()
