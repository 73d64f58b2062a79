"""The pipeline's YAML: data, domain-weight methods, the main arms, seeds and the report.

    data:    exactly one of
               {synthetic: {seed, tokens_per_domain, seq_len, val_blocks}}   the built-in corpus
               {prepare: {input, domain_field, text_field, tokenizer, seq_len, val_fraction, num_proc}}
                                                        `mixweight data prepare` of INPUT (JSONL, Parquet, ...);
                                                        with domains: cluster:K (and embed, cluster_sample,
                                                        cluster_seed, cluster_backend, compare_field) or
                                                        domains_from: CORPUS, domains made by clustering
               {path: DIR}                              an existing corpus directory (also {path: {dir: DIR}})
                                                        or corpus URL (s3://, gs://, ..., file:///DIR)
    train:   TrainConfig keys shared by every arm (model, steps, batch_size, lr, ...); its report_to
             (experiment trackers) also reaches the DoReMi and DoGE proxies unless their section sets one
    doremi:  DoReMiConfig: its options (proxy, steps, eta, ...) and a train: block of TrainConfig overrides for
             its reference and proxy runs ({eta: 1.0, train: {lr: 2e-3, batch_size: 28}}), or null to skip DoReMi
    doge:    DoGEConfig: its options (proxy, steps, mu, ...) and a train: block, or null to skip DoGE
    regmix:  RegMixConfig: the swarm's options (proxy, runs, steps, target, regressor, ...) and a train: block for
             every swarm run, or null to skip RegMix (it runs only when an arm uses domain_weights: regmix)
             (the flat form of before, {lr: 2e-3, ...} beside the options, is read with one deprecation line)
    arms:    {name: TrainConfig overrides}; domain_weights may name a method: doremi | doge | regmix, or be online:odm |
             online:doremi with mixing: {every: K} (online DoReMi's reference: the doremi stage's round-0 reference
             run). Blocks (sample_weighting, mixing) merge key by key over train's: `sample_weighting: linupper`
             in an arm keeps train's `sample_weighting: {r: 0.4}`.
             A name becomes the directory runs/<name>-seed<S>: one plain path component.
    seeds:   [0, 1, ...]  every arm runs once per seed
    report:  {baseline: uniform}
    eval:    {lm_eval: {tasks: [...], num_fewshot: 5, include_path: DIR, limit: N, batch_size: 16}}
             (optional; needs `pip install -e ".[eval]"`; each arm's final checkpoint is scored).
             Beware: lm-eval-harness task YAML under `include_path` can run Python by design
             (its `!function` tag imports a module next to the YAML), so point it only at task
             files you trust; everything else the pipeline reads is plain data.

Every section is checked against a typed config when the pipeline is loaded (unknown keys
get the closest valid one, values their type), so a typo fails before any stage runs.
A key given twice in one mapping (the same arm twice) is an error, not a silent overwrite.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from mixweight.core.config import build_config, closest_hint, dotted_keys, merge_values, read_yaml, rename_keys, require
from mixweight.data.names import NAME_RULE, name_problem
from mixweight.data.prepare import PrepareConfig
from mixweight.data.synthetic import SynthConfig
from mixweight.domain.methods import methods
from mixweight.errors import MixweightError
from mixweight.sampling.spec import MixtureSpec
from mixweight.train.config import TrainConfig
from mixweight.train.mixers import mixers

DEFAULT_ARMS = {
    "uniform": {"domain_weights": "uniform"},
    "linupper": {"domain_weights": "uniform", "sample_weighting": "linupper"},
    "doremi": {"domain_weights": "doremi"},
    "doremi+linupper": {"domain_weights": "doremi", "sample_weighting": "linupper"},
    "doge": {"domain_weights": "doge"},
    "doge+linupper": {"domain_weights": "doge", "sample_weighting": "linupper"},
}
# Keys each stage gets from the pipeline itself, never from the YAML.
OWNED_BY_PIPELINE = {"data", "out", "work_dir", "resume"}
# Keys that change no result (display, where metrics are mirrored): left out of stage keys, so changing
# them reruns nothing.
NOT_IN_STAGE_KEY = {"progress", "report_to"}


# The data forms: `data synth` and `data prepare` options (their config classes, so the defaults live in one place;
# the pipeline sets out and overwrite), or an existing corpus.
@dataclass
class PathData:
    dir: str


DATA_FORMS = {"synthetic": SynthConfig, "prepare": PrepareConfig, "path": PathData}
DATA_KINDS = tuple(DATA_FORMS)
SET_BY_PIPELINE = {"out": "the corpus is written into OUT/corpus", "overwrite": "the pipeline replaces its own corpus"}


@dataclass
class ReportSection:
    baseline: Optional[str] = None


@dataclass
class LmEvalSection:
    tasks: list[str]
    num_fewshot: int = 5
    include_path: Optional[str] = None  # lm-eval task YAML here may run Python (`!function`): trusted files only
    limit: Optional[Union[int, float]] = None
    batch_size: int = 16

    def validate(self) -> None:
        require(bool(self.tasks), "pipeline 'eval.lm_eval': 'tasks' must be a non-empty list of lm-eval task names")
        require(self.num_fewshot >= 0, f"pipeline 'eval.lm_eval': 'num_fewshot' must be >= 0, got {self.num_fewshot}")
        require(self.batch_size >= 1, f"pipeline 'eval.lm_eval': 'batch_size' must be >= 1, got {self.batch_size}")


@dataclass
class EvalSection:
    lm_eval: Optional[LmEvalSection] = None


def data_form(data: dict) -> tuple[str, Any, dict]:
    """('synthetic' | 'prepare' | 'path', its typed config, the keys the YAML gave) from the pipeline's `data`
    section. The stage key holds the keys given (a key left out takes the command's default)."""
    given = list(data) if isinstance(data, dict) else data  # keys as given: YAML keys may mix types, so no sort
    require(
        isinstance(data, dict) and len(data) == 1,
        f"pipeline: 'data' needs exactly one of {list(DATA_KINDS)}, got {given!r}",
    )
    ((kind, options),) = data.items()
    if kind not in DATA_FORMS:
        raise MixweightError(f"pipeline: unknown 'data' form '{kind}'; {closest_hint(str(kind), list(DATA_KINDS))}")
    if kind == "path" and isinstance(options, str):
        options = {"dir": options}  # the short form: data: {path: DIR}
    if options is None:
        options = {}
    where = f"pipeline 'data.{kind}'"
    require(isinstance(options, dict), f"{where}: expected a mapping of keys, got {options!r}")
    for key, why in SET_BY_PIPELINE.items():
        require(kind == "path" or key not in options, f"{where}: '{key}' is set by the pipeline ({why}); remove it")
    try:
        form = build_config(DATA_FORMS[kind], options, where)
    except MixweightError as exc:  # a value check of the command's own: say where in the YAML
        message = str(exc)
        raise MixweightError(message if message.startswith(where) else f"{where}: {message}") from None
    require(kind != "prepare" or form.input is not None, f"{where}: missing required key(s) ['input']")
    return kind, form, {key: getattr(form, key) for key in options}  # the given keys, typed


def check_arm_name(name) -> None:
    problem = name_problem(name)
    if problem is not None:
        raise MixweightError(
            f"pipeline: arm name {name!r} {problem}; an arm name becomes the run directory "
            f"runs/<arm>-seed<S>, so {NAME_RULE}"
        )


@dataclass
class PipelineConfig:
    data: dict = field(default_factory=lambda: {"synthetic": {}})
    train: dict = field(default_factory=dict)
    # one section per registered weights method (mixweight.domain.methods), under its name in the YAML: the
    # method's typed config (its defaults when the YAML leaves the section out), or None (`null`: skipped)
    methods: dict = field(default_factory=dict)
    arms: dict = field(default_factory=lambda: dict(DEFAULT_ARMS))
    seeds: list[int] = field(default_factory=lambda: [0])
    report: ReportSection = field(default_factory=ReportSection)
    eval: EvalSection = field(default_factory=EvalSection)
    progress: bool = True
    # `train` and `arms` keep the keys as written (a stage's key is the values a user gave); validate() builds
    # each arm's typed TrainConfig from them once, and arm_config() hands it to the stage that completes it.

    def __post_init__(self) -> None:
        self.methods = {name: self.methods.get(name, method.config()) for name, method in methods().items()}

    def section(self, method: str):
        """The method's typed section, None when the YAML set it to null."""
        return self.methods[method]

    def validate(self) -> None:
        data_form(self.data)
        require(
            bool(self.seeds) and len(set(self.seeds)) == len(self.seeds),
            "pipeline: 'seeds' must be distinct, non-empty",
        )
        require(all(seed >= 0 for seed in self.seeds), f"pipeline: 'seeds' must be >= 0, got {self.seeds}")
        require(bool(self.arms), "pipeline: 'arms' is empty")
        train_section(self.train, "pipeline 'train'")
        for method, section in self.methods.items():  # built and validated when read; here what the pipeline sets
            given = [k for k in sorted(OWNED_BY_PIPELINE) if getattr(section, k, None) not in (None, False)]
            require(not given, f"pipeline '{method}': '{given[0] if given else ''}' is set by the pipeline; remove it")
        arm_configs = {}
        for name, overrides in self.arms.items():
            check_arm_name(name)
            require(isinstance(overrides, dict), f"pipeline: arm '{name}' must be a mapping of train keys")
            arm = arm_values(self, name)
            method = arm.get("domain_weights")
            if method in self.methods:
                require(
                    self.methods[method] is not None,
                    f"pipeline: arm '{name}' uses domain_weights '{method}' but the '{method}' section is null",
                )
            needs = online_input(arm)
            if needs is not None:
                require(
                    self.methods.get(needs[0]) is not None,
                    f"pipeline: arm '{name}' uses domain_weights '{method}', whose reference run comes from the "
                    f"'{needs[0]}' section, but that section is null (or give the arm its own {needs[1]})",
                )
            # domain_weights may still name a weights section (its file exists once the method has run) and an
            # online DoReMi arm may lack its reference: the arm's stage sets both, with data and out
            arm_configs[name] = train_section(arm, f"pipeline arm '{name}'")
        require(
            self.report.baseline is None or self.report.baseline in self.arms,
            f"pipeline: report baseline '{self.report.baseline}' is not an arm; arms: {sorted(self.arms)}",
        )
        self._arm_configs = arm_configs

    def arm_config(self, name: str) -> TrainConfig:
        """Arm `name`'s TrainConfig as validated when the YAML was read; its stage sets data, out, seed, and a
        weights file or reference run a weights stage makes."""
        if "_arm_configs" not in vars(self):  # a copy (dataclasses.replace) does not carry it: build it again
            self.validate()
        return self._arm_configs[name]


@dataclass
class _SectionTrainConfig(TrainConfig):
    """A TrainConfig the pipeline completes before training: built and checked without data and out."""

    def validate(self) -> None:
        super().validate(require_paths=False)


TRAIN_KEYS = [f.name for f in dataclasses.fields(TrainConfig)]


def train_section(values: dict, where: str) -> TrainConfig:
    """The typed TrainConfig of the pipeline's train section or of one arm (train merged with the arm's keys),
    checked once here: unknown keys, keys the pipeline sets, types and values."""
    for key in values:
        if key in OWNED_BY_PIPELINE:
            raise MixweightError(f"{where}: '{key}' is set by the pipeline; remove it")
        if key not in TRAIN_KEYS:
            raise MixweightError(f"{where}: unknown key '{key}'; {closest_hint(key, TRAIN_KEYS)}")
    section = build_config(_SectionTrainConfig, values, where)
    return TrainConfig(**{name: getattr(section, name) for name in TRAIN_KEYS})


def section_key(section) -> dict[str, Any]:
    """A weights section's values for its stage key: its options (those the pipeline sets left out) and its train
    block, without the keys that change no result (NOT_IN_STAGE_KEY), so flat and nested forms key alike."""
    skip = {"train"} | OWNED_BY_PIPELINE | NOT_IN_STAGE_KEY
    values = {f.name: getattr(section, f.name) for f in dataclasses.fields(section) if f.name not in skip}
    train = {k: v for k, v in getattr(section, "train", {}).items() if k not in NOT_IN_STAGE_KEY}
    return {**values, "train": train} if train else values


def used_methods(config: "PipelineConfig") -> dict[str, Any]:
    """The weights sections some arm reads (its weights file, or an online arm's reference run): the stages to run."""
    used = {}
    for method, section in config.methods.items():
        arms = [arm_values(config, arm) for arm in config.arms]
        if section is not None and any(a.get("domain_weights") == method or online_stage(a) == method for a in arms):
            used[method] = section
    return used


def online_input(arm: dict) -> Optional[tuple[str, str]]:
    """(weights stage, train key) when an online arm reads a stage's work (online DoReMi: the doremi stage's
    reference run, as mixing.doremi.reference) and does not set that key itself; else None. The mixer class says
    which."""
    spec = MixtureSpec.parse(arm.get("domain_weights", TrainConfig.domain_weights))
    cls = mixers().get(spec.name) if spec.online else None
    if cls is None or cls.READS_STAGE is None or dotted_keys(arm).get(cls.STAGE_KEY) is not None:
        return None
    return cls.READS_STAGE, cls.STAGE_KEY


def online_stage(arm: dict) -> Optional[str]:
    """The weights stage an online arm reads (online:doremi's reference run), or None."""
    found = online_input(arm)
    return None if found is None else found[0]


def arm_values(config: PipelineConfig, name: str) -> dict[str, Any]:
    """The arm's train keys as given: the train section's, the arm's over them (blocks merged key by key)."""
    return merge_values(config.train, config.arms[name], TrainConfig)


def load_pipeline_config(path: str | Path) -> PipelineConfig:
    """The pipeline YAML, every section typed and checked; an empty one is refused (it would run every default
    stage, hours of training, when the file was most likely cut or not yet written)."""
    values = read_yaml(path)
    if not values:
        raise MixweightError(
            f"{path}: the pipeline config is empty; an empty config would run the whole default pipeline (hours): "
            "write the sections you mean (data, train, arms, ...), e.g. start from configs/quickstart.yaml"
        )
    return pipeline_config(values, str(path))


def in_todays_spelling(values: dict, where: str, quiet: bool = False) -> dict:
    """A pipeline's mapping with the renamed keys of before under today's names: the flat train keys (in train and
    in every arm) in their blocks, a method section's old keys (one deprecation line unless `quiet`: a record
    an older mixweight wrote)."""
    values = dict(values)
    for name, method in methods().items():
        if isinstance(values.get(name), dict):
            values[name] = rename_keys(method.config, values[name], f"{where}: '{name}'", quiet)
    if isinstance(values.get("train"), dict):
        values["train"] = rename_keys(TrainConfig, values["train"], f"{where}: 'train'", quiet)
    if isinstance(values.get("arms"), dict):
        values["arms"] = {
            arm: rename_keys(TrainConfig, keys, f"{where}: arm '{arm}'", quiet) if isinstance(keys, dict) else keys
            for arm, keys in values["arms"].items()
        }
    return values


def pipeline_config(values: dict, where: str) -> PipelineConfig:
    """A PipelineConfig from the YAML's mapping; a registered weights method's name is its section's key."""
    raw = dict(values)
    registered = methods()
    valid = [*(f.name for f in dataclasses.fields(PipelineConfig) if f.name != "methods"), *registered]
    for key in raw:
        if key not in valid:
            raise MixweightError(f"{where}: unknown key '{key}'; {closest_hint(str(key), valid)}")
    raw = in_todays_spelling(raw, where)
    sections = {}
    for name, method in registered.items():
        if name in raw:
            value = raw.pop(name)
            sections[name] = None if value is None else _method_section(method.config, value, f"{where}: '{name}'")
    return build_config(PipelineConfig, {**raw, "methods": sections}, where)


def _method_section(cls, value, where: str):
    if not isinstance(value, dict):
        raise MixweightError(f"{where}: expected a mapping of {cls.__name__} keys, got {value!r}")
    return build_config(cls, value, where)
