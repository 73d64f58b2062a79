"""Every flag of every command: documented, and passed through torchrun's own parser untouched.

torchrun parses its whole command line with argparse before it launches anything, and
argparse accepts unambiguous abbreviations: a script flag that is a prefix of one of
torchrun's options (``--r`` of ``--rdzv-backend``, ``--role``, ...) is taken by torchrun,
or refused as ambiguous, even after ``-m mixweight``. These tests run both parsers only:
no process is launched.
"""

import argparse
import re
import shlex
from pathlib import Path

import pytest
import yaml

from mixweight.cli import build_parser, main
from mixweight.core.config import load_config
from mixweight.train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
CONFIG_COMMANDS = [("train",), ("weights", "doremi"), ("weights", "doge")]
# Spellings of before (0.1's flat keys) that torchrun takes as its own: hidden, deprecated, each renamed to a
# torchrun-safe flag (--r is --sample-weighting.r).
TORCHRUN_UNSAFE_ALIASES = {"--r"}


def torchrun_parser() -> argparse.ArgumentParser:
    from torch.distributed.run import get_args_parser

    return get_args_parser()


def commands(parser: argparse.ArgumentParser, path: tuple = ()):
    """(command path, its parser) for every command and subcommand of ``parser``."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, path + (name,))


def arguments(parser: argparse.ArgumentParser):
    return [a for a in parser._actions if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]


def sample_value(action: argparse.Action) -> str:
    if action.choices:
        return str(list(action.choices)[0])
    return {int: "3", float: "0.5"}.get(action.type, "x")


def every_flag():
    for path, parser in commands(build_parser()):
        for action in arguments(parser):
            for flag in action.option_strings:
                if flag.startswith("--"):
                    yield path, action, flag


def test_the_flag_walk_sees_every_command():
    paths = {path for path, _, _ in every_flag()}
    assert set(CONFIG_COMMANDS) <= paths and {("eval",), ("compare",), ("pipeline",), ("weights", "export")} <= paths


@pytest.mark.parametrize("form", ["separate", "equals"])
def test_every_flag_survives_a_torchrun_command_line(form):
    launcher = torchrun_parser()
    eaten = []
    for path, action, flag in every_flag():
        takes_value = action.nargs != 0
        if takes_value and form == "equals":
            script_args = [*path, f"{flag}={sample_value(action)}"]
        else:
            script_args = [*path, flag, sample_value(action)] if takes_value else [*path, flag]
        try:
            parsed = launcher.parse_args(["--nproc_per_node=2", "-m", "mixweight", *script_args])
        except SystemExit:  # torchrun refused it ("ambiguous option: --r could match --rdzv-backend, ...")
            eaten.append(flag)
            continue
        if not (parsed.module and parsed.training_script == "mixweight" and parsed.training_script_args == script_args):
            eaten.append(flag)
    assert set(eaten) == TORCHRUN_UNSAFE_ALIASES, f"torchrun takes these flags as its own: {sorted(set(eaten))}"
    for path, action, flag in every_flag():
        if flag in TORCHRUN_UNSAFE_ALIASES:
            assert action.help == argparse.SUPPRESS and action.dest in renamed_flags(path), flag


@pytest.mark.parametrize("path", CONFIG_COMMANDS, ids=" ".join)
def test_config_flags_reach_their_field_through_torchrun(path):
    """Each config field's documented (first) flag, passed through torchrun, parses to the value given."""
    launcher, cli = torchrun_parser(), build_parser()
    checked = 0
    for flag_path, action, flag in every_flag():
        if flag_path != path or flag != action.option_strings[0] or action.dest == "config" or action.nargs == 0:
            continue
        if action.help == argparse.SUPPRESS:  # a spelling of before, not documented (torchrun may take --r)
            continue
        value = sample_value(action)
        script_args = launcher.parse_args(["--nproc_per_node=2", "-m", "mixweight", *path, flag, value])
        args = cli.parse_args(script_args.training_script_args)
        assert getattr(args, action.dest) == (action.type(value) if action.type else value), flag
        checked += 1
    assert checked > 10


def test_the_temperature_flag_passes_torchrun_and_its_old_spellings_still_read(tmp_path, capsys):
    from mixweight.cli.flags import overrides

    cli = build_parser()
    launched = torchrun_parser().parse_args(
        ["--nproc_per_node=2", "-m", "mixweight", "train", "--sample-weighting.r", "0.7"]
    )
    assert getattr(cli.parse_args(launched.training_script_args), "sample_weighting.r") == 0.7
    for old in (["--temperature", "0.6"], ["--r", "0.6"], ["--r=0.6"]):  # deprecated; --r outside torchrun only
        args = cli.parse_args(["train", "--data", "d", "--out", "o", *old])
        assert load_config(TrainConfig, None, overrides(args, TrainConfig)).sample_weighting.r == 0.6, old
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"data": "d", "out": "o", "r": 0.3}))
    assert load_config(TrainConfig, config, {}).sample_weighting.r == 0.3  # the YAML key of before, deprecated
    assert "r -> sample_weighting.r" in capsys.readouterr().err


def renamed_flags(path: tuple[str, ...]) -> set[str]:
    """The old names a command's config still reads (RENAMED_KEYS), whose flags are hidden from --help."""
    from mixweight.core.config import renamed_keys
    from mixweight.domain.methods import methods

    configs = [m.config for m in methods().values() if path == ("weights", m.name)]
    configs += [TrainConfig] if path == ("train",) else []
    return {old for cls in configs for old in renamed_keys(cls)}


def test_every_argument_has_help_with_its_default():
    """Each argument says what it is; each optional flag that takes a value says its default."""
    missing, no_default = [], []
    for path, parser in commands(build_parser()):
        for action in arguments(parser):
            name = f"{' '.join(path)} {action.option_strings[0] if action.option_strings else action.dest}"
            text = (action.help or "").strip()
            if text == argparse.SUPPRESS and action.dest in renamed_flags(path):
                continue  # a renamed key's spelling of before: accepted for a release, hidden from --help
            if not text or text == argparse.SUPPRESS:
                missing.append(name)
            elif action.option_strings and action.nargs != 0 and not action.required and "default" not in text:
                no_default.append(name)
    assert not missing, f"arguments without help: {missing}"
    assert not no_default, f"flags whose help does not state the default: {no_default}"


def documented_torchrun_lines():
    """Every torchrun command in README.md and the shipped configs, continuation lines joined."""
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "configs").glob("*.yaml"))]:
        text = re.sub(r"\\\n\s*", " ", path.read_text())
        for line in text.splitlines():
            line = line.strip().lstrip("#").strip().strip("`")
            if line.startswith("torchrun "):
                found.append((path.name, line))
    return found


def test_documented_torchrun_lines_parse_as_written():
    lines = documented_torchrun_lines()
    assert len(lines) >= 2
    launcher, cli = torchrun_parser(), build_parser()
    for where, line in lines:
        parsed = launcher.parse_args(shlex.split(line)[1:])
        assert parsed.module and parsed.training_script == "mixweight", (where, line)
        cli.parse_args(parsed.training_script_args)  # SystemExit on a flag mixweight does not know


@pytest.mark.parametrize("method", ["doremi", "doge"])
def test_train_block_flags_pass_torchrun_and_reach_the_block(method, tmp_path):
    """--train.KEY after `torchrun ... -m mixweight weights METHOD` lands in the method config's train block."""
    from mixweight.cli.flags import overrides
    from mixweight.domain.doge_run import DoGEConfig
    from mixweight.domain.doremi_run import DoReMiConfig

    cls = DoReMiConfig if method == "doremi" else DoGEConfig
    given = ["--train.lr", "2e-3", "--train.weight-decay", "0", "--train.precision", "bf16", "--train.compile"]
    given += ["--doge-impl", "loop"] if method == "doge" else []  # compile refuses ghost DoGE's several backwards
    launched = torchrun_parser().parse_args(["--nproc_per_node=2", "-m", "mixweight", "weights", method, *given])
    assert launched.training_script_args == ["weights", method, *given]
    args = build_parser().parse_args([*launched.training_script_args, "--train.grad-clip", "0.5"])
    config = load_config(cls, None, overrides(args, cls), cls.COMMAND)
    assert config.train == {"lr": 2e-3, "weight_decay": 0.0, "precision": "bf16", "compile": True, "grad_clip": 0.5}
    proxy = config.proxy_train_config(tmp_path, data="corpus")
    got = (proxy.lr, proxy.weight_decay, proxy.precision, proxy.compile, proxy.grad_clip)
    assert got == (2e-3, 0.0, "bf16", True, 0.5)


def test_flags_are_never_abbreviated_and_a_refused_train_key_names_its_own_command(capsys):
    """argparse would read --train.r as --train.report-to (a unique prefix); every parser takes whole flags only."""
    with pytest.raises(SystemExit):
        main(["train", "--dat", "corpus", "--out", "run"])
    assert "unrecognized arguments: --dat" in capsys.readouterr().err
    for method in ("doremi", "doge"):
        with pytest.raises(SystemExit):
            main(["weights", method, "--data", "c", "--out", "w.json", "--train.r", "0.3"])
        err = capsys.readouterr().err
        assert f"weights {method}: 'train.r' (now 'train.sample_weighting.r') cannot be set here" in err, err


def test_every_commands_help_prints():
    """argparse formats help texts with %: a literal '5%' in a config field's help crashed `train --help`."""
    for path, parser in commands(build_parser()):
        text = parser.format_help()
        assert "usage:" in text, path
    assert "5% of the run's steps" in dict(commands(build_parser()))[("train",)].format_help()
