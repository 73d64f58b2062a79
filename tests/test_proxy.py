"""The proxy runner every weights method shares, and the nested method configs (a `train:` block)."""

import hashlib
import json
from pathlib import Path

import pytest
import torch
import yaml

from mixweight.cli import main
from mixweight.core.config import load_config
from mixweight.domain.doge_run import DoGEConfig, run_doge
from mixweight.domain.doremi_run import DoReMiConfig
from mixweight.domain.proxy import config_hash, train_or_reuse
from mixweight.errors import MixweightError
from mixweight.train.config import TrainConfig

DEPRECATED = "mixweight: deprecated:"


def _cli(argv) -> None:
    main([str(a) for a in argv])


def _saved_config(run_dir: Path) -> dict:
    return yaml.safe_load((run_dir / "config.yaml").read_text())


# --- nested and deprecated flat forms --------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["doremi", "doge"])
def test_nested_and_flat_forms_give_byte_identical_artifacts(method, synth_corpus, tiny_spec, tmp_path, capsys):
    torch.set_num_threads(1)
    common = ["weights", method, "--data", synth_corpus, "--proxy", tiny_spec, "--steps", "3", "--log-every", "1"]
    if method == "doremi":
        common += ["--reference-steps", "2"]
    values = {"batch-size": "8", "lr": "3e-3", "final-lr": "3e-4", "warmup-steps": "1"}
    nested = [x for k, v in values.items() for x in (f"--train.{k}", v)] + ["--train.no-progress"]
    flat = [x for k, v in values.items() for x in (f"--{k}", v)] + ["--no-progress"]
    _cli([*common, *nested, "--out", tmp_path / "nested.json"])
    assert DEPRECATED not in capsys.readouterr().err
    _cli([*common, *flat, "--out", tmp_path / "flat.json"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith(DEPRECATED)]
    assert len(err) == 1 and "write train.batch_size, train.lr" in err[0] and "--train.final-lr" in err[0]
    assert (tmp_path / "nested.json").read_bytes() == (tmp_path / "flat.json").read_bytes()
    proxy = tmp_path / "nested.work" / ("round-0/proxy" if method == "doremi" else "proxy")
    saved = _saved_config(proxy)
    assert (saved["batch_size"], saved["lr"], saved["warmup_steps"]) == (8, 3e-3, 1)


def test_a_train_block_key_reaches_the_proxy_runs(synth_corpus, tiny_spec, tmp_path):
    torch.set_num_threads(1)
    config = tmp_path / "doremi.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "steps": 2,
                "reference_steps": 2,
                "log_every": 1,
                "train": {"weight_decay": 0.0, "grad_clip": 0.5, "batch_size": 8, "progress": False},
            }
        )
    )
    out = tmp_path / "w.json"
    _cli(["weights", "doremi", "--config", config, "--data", synth_corpus, "--proxy", tiny_spec, "--out", out])
    for run in ("reference", "proxy"):
        saved = _saved_config(tmp_path / "w.work" / "round-0" / run)
        assert (saved["weight_decay"], saved["grad_clip"], saved["batch_size"]) == (0.0, 0.5, 8), run
    recorded = yaml.safe_load((tmp_path / "w.work" / "doremi_config.yaml").read_text())
    assert recorded["train"]["weight_decay"] == 0.0


def test_the_method_supplies_its_train_defaults(tmp_path):
    doremi = DoReMiConfig(data="d", out="o.json").proxy_train_config(tmp_path / "p")
    assert (doremi.batch_size, doremi.eval_every, doremi.domain_weights) == (32, 0, "uniform")
    doge = DoGEConfig(data="d", out="o.json").resolved(["a", "b"]).proxy_train_config(tmp_path / "p")
    assert (doge.batch_size, doge.eval_blocks, doge.grad_clip) == (16, 16, 5.0)  # score reference: max_grad_norm
    paper = DoGEConfig(data="d", out="o.json", score="paper").resolved(["a", "b"]).proxy_train_config(tmp_path)
    assert paper.grad_clip == 1.0
    mine = DoGEConfig(data="d", out="o.json", train={"grad_clip": 0.25}).resolved(["a", "b"])
    assert mine.proxy_train_config(tmp_path).grad_clip == 0.25  # the train block overrides the score rule


# --- refusals ----------------------------------------------------------------------------------------------
def test_both_spellings_of_a_key_are_refused(tmp_path, cli_refuses):
    error = cli_refuses(
        ["weights", "doremi", "--data", "d", "--out", tmp_path / "w.json", "--lr", "1e-3"] + ["--train.lr", "2e-3"]
    )
    assert "'lr' (--lr, deprecated) and 'train.lr' (--train.lr) both given; give only 'train.lr'" in error
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"batch_size": 8, "train": {"batch_size": 16}}))
    with pytest.raises(
        MixweightError, match=r"c.yaml: 'batch_size' \(--batch-size, deprecated\) and 'train.batch_size'"
    ):
        load_config(DoGEConfig, config, {})
    assert not (tmp_path / "w.json").exists() and not (tmp_path / "w.work").exists()


def test_a_refused_command_prints_its_error_line_alone(synth_corpus, tmp_path, cli_refuses):
    """The deprecation line of a flat flag is held back: a refused command prints one line (cli_refuses checks)."""
    error = cli_refuses(["weights", "doge", "--data", synth_corpus, "--out", tmp_path, "--lr", "1e-3"])
    assert "is a directory" in error


def test_an_unknown_or_owned_train_key_is_refused_with_a_hint(tmp_path, cli_refuses):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"train": {"weight_decy": 0.0}}))
    with pytest.raises(MixweightError, match=r"unknown key 'train.weight_decy'; did you mean 'weight_decay'\?"):
        load_config(DoReMiConfig, config, {})
    config.write_text(yaml.safe_dump({"train": {"steps": 10}}))
    with pytest.raises(MixweightError, match=r"'train.steps' cannot be set here: a proxy's steps are the method's"):
        load_config(DoGEConfig, config, {})
    config.write_text(yaml.safe_dump({"train": {"lr": "fast"}}))
    with pytest.raises(MixweightError, match=r"'train.lr': expected a number"):
        load_config(DoGEConfig, config, {})
    error = cli_refuses(["weights", "doge", "--config", config, "--train.lr", "-1", "--data", "d", "--out", "w"])
    assert error == "mixweight: error: weights doge: the proxy's train block: 'lr' must be > 0, got -1.0"


def test_the_flags_and_their_help(capsys):
    from mixweight.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["weights", "doremi", "--train.lr", "1e-3", "--train.fsdp", "--train.no-progress"])
    assert (vars(args)["train.lr"], vars(args)["train.fsdp"], vars(args)["train.progress"]) == (1e-3, True, False)
    with pytest.raises(SystemExit):
        parser.parse_args(["weights", "doge", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--lr LR peak learning rate (after warmup) (deprecated: use --train.lr) (default: 0.001)" in text
    assert "--train.batch-size TRAIN.BATCH_SIZE sequences per micro-batch on each process (default: 16)" in text
    assert "--train.steps" not in text and "--train.model" not in text  # set by the method itself


# --- reuse, resume, refuse: one rule for every method ------------------------------------------------------------
def test_train_or_reuse_trains_then_reuses_then_refuses(synth_corpus, tiny_spec, tmp_path, capsys):
    torch.set_num_threads(1)
    config = TrainConfig(
        data=synth_corpus, out=str(tmp_path / "run"), model=tiny_spec, steps=2, batch_size=4, eval_blocks=2
    )
    config.progress = False
    assert train_or_reuse(config) == tmp_path / "run"
    assert "steps 0->2" in capsys.readouterr().out
    stamp = (tmp_path / "run" / "eval.json").stat().st_mtime_ns
    train_or_reuse(config)
    assert "mixweight train:" not in capsys.readouterr().out
    assert (tmp_path / "run" / "eval.json").stat().st_mtime_ns == stamp
    config.lr = 2e-3
    with pytest.raises(MixweightError, match=r"run: a finished run with a different config \(lr: 0.001 -> 0.002\)"):
        train_or_reuse(config)


def _legacy_stamp(config: DoGEConfig, corpus_hash: str) -> str:
    """The stamp mixweight 0.x wrote into a DoGE work dir: sha256 of its flat config (resolved), 16 hex."""
    flat = {
        "proxy": config.proxy,
        "target": config.target,
        "steps": config.steps,
        "mu": config.mu,
        "score": config.score,
        "max_grad_norm": config.max_grad_norm,
        "batch_size": config.train.get("batch_size", 16),
        "grad_accum": config.train.get("grad_accum", 1),
        "lr": config.train.get("lr", 1e-3),
        "final_lr": config.train.get("final_lr", 1e-4),
        "warmup_steps": config.train.get("warmup_steps", 20),
        "seed": config.seed,
        "checkpoint_every": config.train.get("checkpoint_every", 100),
        "log_every": config.log_every,
        "corpus": corpus_hash,
    }
    return hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest()[:16]


def test_an_older_doge_work_dir_keeps_working_when_its_stamp_matches(synth_corpus, tiny_spec, tmp_path, capsys):
    from mixweight.data.manifest import load_manifest

    torch.set_num_threads(1)
    train = {"batch_size": 8, "lr": 3e-3, "progress": False}
    config = DoGEConfig(data=synth_corpus, out=str(tmp_path / "w.json"), proxy=tiny_spec, steps=2, train=train)
    first = run_doge(config)
    work = tmp_path / "w.work"
    (work / "doge_config.yaml").unlink()  # as an older mixweight left it: a stamp, no record
    corpus_hash = load_manifest(synth_corpus).config_hash
    (work / "doge_config_hash").write_text(_legacy_stamp(config.resolved(first.domains), corpus_hash) + "\n")
    capsys.readouterr()
    assert run_doge(config).weights == first.weights
    assert "mixweight train:" not in capsys.readouterr().out  # the finished proxy was reused
    (work / "doge_config.yaml").unlink()
    (work / "doge_config_hash").write_text("0123456789abcdef\n")
    with pytest.raises(MixweightError, match=r"doge_config_hash stamp, from an older mixweight, does not match"):
        run_doge(config)


def test_one_config_hash_for_every_method():
    doremi = DoReMiConfig(data="a", out="w.json")
    assert len(config_hash(doremi, "c")) == 64
    assert config_hash(doremi, "c") == config_hash(DoReMiConfig(data="b", out="x.json", work_dir="y"), "c")
    assert config_hash(doremi, "c") == config_hash(DoReMiConfig(train={"batch_size": 32, "progress": False}), "c")
    assert config_hash(doremi, "c") != config_hash(DoReMiConfig(train={"weight_decay": 0.0}), "c")
    assert config_hash(doremi, "c") != config_hash(doremi, "d")
    assert config_hash(DoGEConfig(), "c") != config_hash(DoGEConfig(doge_impl="loop", mu=0.5), "c")
    assert config_hash(DoGEConfig(mu=0.5), "c") == config_hash(DoGEConfig(doge_impl="loop", mu=0.5), "c")


@pytest.mark.parametrize(
    "method,flag,reason",
    [
        ("regmix", "--train.max-epochs", "its own --max-epochs caps the chosen mixture"),
        ("doremi", "--train.sample-weighting", "their own step objective"),
        ("doge", "--train.sample-weighting.start", "their own step objective"),
        ("regmix", "--train.sample-weighting.cap", "their own step objective"),
        ("regmix", "--train.mixing.every", "online domain mixing"),
        ("doge", "--train.mixing.odm.alpha", "online domain mixing"),
        ("doge", "--train.r-start", "their own step objective"),  # the flat flag of before: refused the same way
        ("regmix", "--train.mixing-every", "online domain mixing"),
        ("doremi", "--train.domain-weights", "the method decides what its proxy runs sample"),
    ],
)
def test_a_train_key_the_method_ignores_or_would_corrupt_is_refused_naming_why(
    tmp_path, cli_refuses, method, flag, reason
):
    error = cli_refuses(["weights", method, "--data", "d", "--out", tmp_path / "w.json", flag, "2"])
    key = flag.removeprefix("--train.").replace("-", "_")
    block = key.split(".")[0]  # a key inside a block: the whole block is the method's
    now = f" (now 'train.{TrainConfig.RENAMED_KEYS[key]}')" if key in TrainConfig.RENAMED_KEYS else ""
    assert f"'train.{key if now else block}'{now} cannot be set here" in error and reason in error
    assert not (tmp_path / "w.json").exists()


def test_the_refused_train_keys_are_not_offered_in_help(capsys):
    from mixweight.cli import main

    with pytest.raises(SystemExit):
        main(["weights", "regmix", "--help"])
    shown = capsys.readouterr().out
    assert "--max-epochs" in shown and "--train.max-epochs" not in shown and "--train.sample-weighting" not in shown
