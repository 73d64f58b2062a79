"""The pipeline's YAML: data, domain-weight methods, the main arms, seeds and the report.

    data:    {synthetic: {seed, tokens_per_domain, seq_len}} | {prepare: {input, ...}} | {path: DIR}
    train:   TrainConfig keys shared by every arm (model, steps, batch_size, lr, ...)
    doremi:  DoReMiConfig keys (proxy, steps, eta, ...), or null to skip DoReMi
    doge:    DoGEConfig keys (proxy, steps, mu, ...), or null to skip DoGE
    arms:    {name: TrainConfig overrides}; domain_weights may name a method: doremi | doge
    seeds:   [0, 1, ...]  every arm runs once per seed
    report:  {baseline: uniform}
    eval:    {lm_eval: {tasks: [...], num_fewshot: 5, include_path: DIR, limit: N}}  (optional;
             needs `pip install -e ".[eval]"`; each arm's final checkpoint is scored)

Each section is checked against its stage's typed config when the pipeline is loaded,
so a typo fails before any training starts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from mixweight.config import build_config, closest_hint, read_yaml, require
from mixweight.domain.doge_run import DoGEConfig
from mixweight.domain.doremi_run import DoReMiConfig
from mixweight.errors import MixweightError
from mixweight.train.config import TrainConfig

METHODS = ("doremi", "doge")
DATA_KINDS = ("synthetic", "prepare", "path")
DEFAULT_ARMS = {
    "uniform": {"domain_weights": "uniform"},
    "linupper": {"domain_weights": "uniform", "sample_weighting": "linupper"},
    "doremi": {"domain_weights": "doremi"},
    "doremi+linupper": {"domain_weights": "doremi", "sample_weighting": "linupper"},
    "doge": {"domain_weights": "doge"},
    "doge+linupper": {"domain_weights": "doge", "sample_weighting": "linupper"},
}
LM_EVAL_KEYS = ["tasks", "num_fewshot", "include_path", "limit", "batch_size"]
# Keys each stage gets from the pipeline itself, never from the YAML.
OWNED_BY_PIPELINE = {"data", "out", "work_dir", "resume"}


@dataclass
class PipelineConfig:
    data: dict = field(default_factory=lambda: {"synthetic": {}})
    train: dict = field(default_factory=dict)
    doremi: Optional[dict] = field(default_factory=dict)
    doge: Optional[dict] = field(default_factory=dict)
    arms: dict = field(default_factory=lambda: dict(DEFAULT_ARMS))
    seeds: list[int] = field(default_factory=lambda: [0])
    report: dict = field(default_factory=dict)
    eval: dict = field(default_factory=dict)
    progress: bool = True

    def validate(self) -> None:
        require(len(self.data) == 1 and next(iter(self.data)) in DATA_KINDS,
                f"pipeline: 'data' needs exactly one of {DATA_KINDS}, got {sorted(self.data)}")
        require(bool(self.seeds) and len(set(self.seeds)) == len(self.seeds), "pipeline: 'seeds' must be distinct, non-empty")
        require(bool(self.arms), "pipeline: 'arms' is empty")
        unknown_report = set(self.report) - {"baseline"}
        require(not unknown_report, f"pipeline: unknown key(s) in 'report': {sorted(unknown_report)}; valid: ['baseline']")
        for section, cls in (("train", TrainConfig), ("doremi", DoReMiConfig), ("doge", DoGEConfig)):
            values = getattr(self, section)
            if values is not None:
                stage_config(cls, values, f"pipeline '{section}'")
        for name, overrides in self.arms.items():
            require(isinstance(overrides, dict), f"pipeline: arm '{name}' must be a mapping of train keys")
            arm = arm_values(self, name)
            method = arm.get("domain_weights")
            if method in METHODS:
                require(getattr(self, method) is not None,
                        f"pipeline: arm '{name}' uses domain_weights '{method}' but the '{method}' section is null")
                arm = {**arm, "domain_weights": "uniform"}  # the file exists only once the method has run
            stage_config(TrainConfig, arm, f"pipeline arm '{name}'")
        unknown_eval = set(self.eval) - {"lm_eval"}
        require(not unknown_eval, f"pipeline: unknown key(s) in 'eval': {sorted(unknown_eval)}; valid: ['lm_eval']")
        lm_eval = self.eval.get("lm_eval")
        if lm_eval is not None:
            unknown = set(lm_eval) - set(LM_EVAL_KEYS)
            require(not unknown, f"pipeline: unknown key(s) in 'eval.lm_eval': {sorted(unknown)}; valid: {LM_EVAL_KEYS}")
            require(isinstance(lm_eval.get("tasks"), list) and lm_eval["tasks"],
                    "pipeline: 'eval.lm_eval.tasks' must be a non-empty list of lm-eval task names")
        baseline = self.report.get("baseline")
        require(baseline is None or baseline in self.arms, f"pipeline: report baseline '{baseline}' is not an arm")


def stage_config(cls, values: dict, where: str, **owned):
    """Build a stage's config from a pipeline section plus the paths the pipeline owns."""
    names = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key in OWNED_BY_PIPELINE:
            raise MixweightError(f"{where}: '{key}' is set by the pipeline; remove it")
        if key not in names:
            raise MixweightError(f"{where}: unknown key '{key}'; {closest_hint(key, names)}")
    placeholders = {k: "." for k in ("data", "out") if k in names}
    return build_config(cls, {**placeholders, **values, **owned}, where)


def arm_values(config: PipelineConfig, name: str) -> dict[str, Any]:
    return {**config.train, **config.arms[name]}


def load_pipeline_config(path: str | Path) -> PipelineConfig:
    return build_config(PipelineConfig, read_yaml(path), str(path))
