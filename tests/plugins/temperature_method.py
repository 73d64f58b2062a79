"""Temperature sampling as a weights method: w_d proportional to tokens_d ** (1 / T).

The example of docs/design.md ("Adding a weights method"), kept as a file so a test can import it:
importing this module is all it takes for `mixweight weights temperature`, a pipeline section
`temperature:`, an arm's `domain_weights: temperature` and `mixweight weights verify` to know it.
"""

from dataclasses import dataclass
from typing import ClassVar

from mixweight.core.artifact import DomainWeights
from mixweight.core.config import option, require
from mixweight.domain.methods import WeightsMethod, register
from mixweight.domain.proxy import ProxyMethodConfig, provenance, start, write_artifact
from mixweight.errors import MixweightError


@dataclass
class TemperatureConfig(ProxyMethodConfig):
    COMMAND: ClassVar[str] = "weights temperature"
    NAME: ClassVar[str] = "temperature"

    temperature: float = option(2.0, "T in w_d ~ tokens_d ** (1/T): 1 is the natural mixture, large is uniform")

    def check_options(self) -> None:
        require(self.temperature > 0, f"{self.COMMAND}: 'temperature' must be > 0, got {self.temperature}")


def tempered(tokens: list[float], temperature: float) -> list[float]:
    powered = [count ** (1.0 / temperature) for count in tokens]
    return [p / sum(powered) for p in powered]


def run_temperature(config: TemperatureConfig) -> DomainWeights:
    corpus = start(config)  # checks the config and --out, opens the corpus
    manifest = corpus.manifest
    tokens = manifest.train_tokens()
    result = DomainWeights(
        domains=list(manifest.domains),
        weights=tempered([tokens[d] for d in manifest.domains], config.temperature),
        method={"name": "temperature", "temperature": config.temperature},
        provenance=provenance(config, manifest, corpus.directory),
    )
    write_artifact(result, config.out, manifest, plots=lambda result, out: None)  # no proxy: nothing to plot
    return result


def verify_temperature(weights: DomainWeights, path, tolerance: float) -> str:
    counts = weights.provenance["domain_token_counts"]
    expected = tempered([counts[d] for d in weights.domains], weights.method["temperature"])
    gap = max(abs(got - want) for got, want in zip(weights.weights, expected))
    if gap > tolerance:
        raise MixweightError(f"{path}: the weights are not tokens ** (1/T): off by {gap:.3g} > {tolerance:g}")
    return f"{path}: temperature weights match tokens ** (1/T), largest deviation {gap:.3g} <= {tolerance:g}"


register(
    WeightsMethod(
        name="temperature",
        help="temperature domain weights: tokens ** (1/T), no proxy",
        config=TemperatureConfig,
        run=run_temperature,
        verify=verify_temperature,
        cost=lambda config: 0,  # trains nothing
    )
)
