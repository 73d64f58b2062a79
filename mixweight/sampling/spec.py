"""What a run samples, as one typed value: `--domain-weights` parsed once, where the config is read.

    natural, uniform      a named mixture of the corpus (token counts, or 1/k each)
    online:NAME           an online mixer that picks each phase's mixture during the run (train/mixers.py)
    METHOD                in a pipeline arm: the weights file the pipeline's METHOD stage writes
    PATH                  a domain_weights.json, or a schedule file (.yaml/.yml/.json list of {start_step, weights})

`MixtureSpec.parse` decides the kind from the text alone (a file's contents are read where the
mixture is resolved against a corpus); `str(spec)` is the text again, which is what config.yaml,
stage keys and inputs.json record.
"""

from __future__ import annotations

from dataclasses import dataclass

from mixweight.sampling.schedule import NAMED

ONLINE_PREFIX = "online:"
KINDS = ("named", "online", "method", "file")


@dataclass(frozen=True)
class MixtureSpec:
    kind: str  # one of KINDS
    name: str  # natural/uniform, the online mixer, the weights method, or the file's path

    @classmethod
    def parse(cls, text, methods=()) -> MixtureSpec:
        """`methods`: the weights methods a pipeline arm may name (none outside the pipeline)."""
        text = str(text)
        if text in NAMED:
            return cls("named", text)
        if text.startswith(ONLINE_PREFIX):
            return cls("online", text[len(ONLINE_PREFIX) :])
        if text in methods:
            return cls("method", text)
        return cls("file", text)

    @property
    def online(self) -> bool:
        return self.kind == "online"

    def __str__(self) -> str:
        return ONLINE_PREFIX + self.name if self.online else self.name
