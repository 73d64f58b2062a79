"""The `mixweight` command: parses, validates, calls the library. Nothing else lives here."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing

from mixweight.core.config import FLAGS, HELP, MOVED, NESTED, OWNED, held_deprecations
from mixweight.errors import MixweightError

BOOL_FLAGS_NEGATABLE = {"progress"}


class ExactFlagParser(argparse.ArgumentParser):
    """No abbreviated flags (argparse's default takes any unique prefix): with --train.KEY flags a prefix such as
    --train.r would silently mean --train.report-to. Subcommand parsers inherit the class."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


def _add_config_flags(parser: argparse.ArgumentParser, cls) -> None:
    """One flag per config field; defaults are suppressed so only given flags override the YAML.

    A nested block (`train`, see `core.config.nested`) gets one ``--train.KEY`` flag per key of its
    config class (dest ``train.KEY``), and its deprecated top-level aliases keep their old flags.
    """
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if NESTED in field.metadata:
            _add_nested_flags(parser, cls, field)
            continue
        flags = field.metadata.get(FLAGS) or ("--" + field.name.replace("_", "-"),)
        _add_flag(parser, flags, field.name, hints[field.name], field.metadata.get(HELP, ""), field.default)


def _add_flag(parser, flags, dest: str, kind, described: str, default, name: str | None = None) -> None:
    # A help text that explains its own default (e.g. one derived from another flag) is not repeated.
    help_text = described if "(default:" in described else f"{described} (default: {default})"
    if kind is bool:
        negatable = (name or dest) in BOOL_FLAGS_NEGATABLE
        if negatable and "." in flags[0]:  # --train.progress / --train.no-progress
            block, key = flags[0][2:].split(".", 1)
            parser.add_argument(*flags, dest=dest, action="store_true", default=argparse.SUPPRESS, help=help_text)
            parser.add_argument(
                f"--{block}.no-{key}",
                dest=dest,
                action="store_false",
                default=argparse.SUPPRESS,
                help=f"turn {flags[0]} off (default: {default})",
            )
            return
        action = argparse.BooleanOptionalAction if negatable else "store_true"
        parser.add_argument(*flags, dest=dest, action=action, default=argparse.SUPPRESS, help=help_text)
    else:
        scalar = next((t for t in typing.get_args(kind) if t is not type(None)), kind)
        parser.add_argument(
            *flags,
            dest=dest,
            type=scalar if scalar in (int, float) else str,
            default=argparse.SUPPRESS,
            help=help_text,
        )


# (command, --BLOCK.KEY) of the keys a nested block may not set -> the one-line refusal naming why.
OWNED_FLAGS: dict[tuple[str, str], str] = {}


def _refuse_owned_flags(parser: argparse.ArgumentParser, argv: list[str] | None) -> None:
    """A flag of a key the block may not set is refused naming why, not as an unrecognized argument."""
    known, extras = parser.parse_known_args(argv)
    command = " ".join(filter(None, (known.command, getattr(known, "weights_command", None))))
    for token in extras:
        message = OWNED_FLAGS.get((command, token.split("=", 1)[0]))
        if message is not None:
            print(f"mixweight: error: {message}", file=sys.stderr)
            sys.exit(2)


def _add_nested_flags(parser: argparse.ArgumentParser, cls, block) -> None:
    """--BLOCK.KEY for every key of the block's config class that the outer config does not set itself."""
    inner, owned, moved = block.metadata[NESTED], block.metadata[OWNED], block.metadata[MOVED]
    hints = typing.get_type_hints(inner)
    defaults = getattr(cls, "TRAIN_DEFAULTS", {})  # the method's own defaults for the block
    notes = getattr(cls, "TRAIN_DEFAULT_NOTES", {})  # defaults that follow other options
    for field in dataclasses.fields(inner):
        if field.name in owned:  # no flag; given anyway, main() refuses it with its reason (not "unrecognized")
            command = getattr(cls, "COMMAND", parser.prog)
            for flag in field.metadata.get(FLAGS) or ("--" + field.name.replace("_", "-"),):
                OWNED_FLAGS[(command, f"--{block.name}.{flag[2:]}")] = (
                    f"{command}: '{block.name}.{field.name}' cannot be set here: {owned[field.name]}"
                )
            continue
        plain = field.metadata.get(FLAGS) or ("--" + field.name.replace("_", "-"),)
        flags = tuple(f"--{block.name}.{flag[2:]}" for flag in plain)
        default = notes.get(field.name, defaults.get(field.name, field.default))
        described = field.metadata.get(HELP, "")
        _add_flag(parser, flags, f"{block.name}.{field.name}", hints[field.name], described, default, field.name)
        if field.name in moved:  # the flat flag of before the block: accepted, deprecated
            _add_flag(
                parser,
                plain,
                field.name,
                hints[field.name],
                f"{described} (deprecated: use {flags[0]})",
                default,
            )


def _add_cache_dir(parser: argparse.ArgumentParser) -> None:
    # Not a config key: where a cache lives changes no result, so it stays out of config hashes.
    parser.add_argument(
        "--cache-dir",
        default=None,
        help="local cache for corpora given as URLs (s3://, gs://, ..., file:///DIR); put it on "
        "node-local disk (default: %(default)s, meaning $MIXWEIGHT_CORPUS_CACHE, else "
        "$MIXWEIGHT_CACHE/remote, else the platform cache directory's mixweight/remote)",
    )


def _overrides(args: argparse.Namespace, cls) -> dict:
    """The flags given, as config values: --train.KEY into {"train": {KEY: ...}}; a deprecated flat alias
    stays flat (the config loader moves it into its block, with the deprecation line)."""
    names = {f.name for f in dataclasses.fields(cls)}
    aliases = {key for block in dataclasses.fields(cls) for key in block.metadata.get(MOVED, ())}
    values: dict = {}
    for key, value in vars(args).items():
        block, dot, inner = key.partition(".")
        if dot and block in names:
            values.setdefault(block, {})[inner] = value
        elif key in names or key in aliases:
            values[key] = value
    return values


def report_result(text: str) -> None:
    """A command's one-line result, from the main process only (every process computes it under torchrun)."""
    from mixweight.core.distributed import is_main_process

    if is_main_process():
        print(text)


def cmd_synth(args) -> None:
    from mixweight.data.output import write_remote
    from mixweight.data.remote import is_url
    from mixweight.data.synthetic import write_synthetic_corpus

    def write(out):
        return write_synthetic_corpus(
            out,
            seed=args.seed,
            tokens_per_domain=args.tokens_per_domain,
            seq_len=args.seq_len,
            overwrite=args.overwrite,
        )

    manifest = write_remote(args.out, write) if is_url(args.out) else write(args.out)
    blocks = {d: manifest.splits["train"][d].blocks for d in manifest.domains}
    print(f"synthetic corpus in {args.out}: {len(manifest.domains)} domains, train blocks {blocks}")


def cmd_prepare(args) -> None:
    from mixweight.data.output import write_remote
    from mixweight.data.prepare import prepare_corpus, report_lines
    from mixweight.data.remote import is_url

    def write(out):
        return prepare_corpus(
            args.input,
            out,
            domain_field=args.domain_field,
            text_field=args.text_field,
            tokenizer=args.tokenizer,
            seq_len=args.seq_len,
            val_fraction=args.val_fraction,
            overwrite=args.overwrite,
            num_proc=args.num_proc,
        )

    manifest = write_remote(args.out, write) if is_url(args.out) else write(args.out)
    for line in report_lines(manifest):
        print(line)
    print(f"corpus in {args.out}: domains {manifest.domains}, vocab {manifest.vocab_size}")


def cmd_train(args) -> None:
    from mixweight.core.config import load_config
    from mixweight.train.config import TrainConfig
    from mixweight.train.loop import train

    config = load_config(TrainConfig, args.config, _overrides(args, TrainConfig))
    result = train(config)
    report_result(
        json.dumps(
            {
                "average_loss": result["average_loss"],
                "worst_domain": result["worst_domain"],
                "domains": {d: round(s["loss"], 4) for d, s in result["domains"].items()},
            }
        )
    )


def cmd_eval(args) -> None:
    from mixweight.eval.run import evaluate_run

    result = evaluate_run(args.run, data=args.data, checkpoint=args.checkpoint)
    print(json.dumps(result, indent=2))


def cmd_weights_doremi(args) -> None:
    from mixweight.core.config import load_config
    from mixweight.domain.doremi_run import DoReMiConfig, run_doremi

    result = run_doremi(load_config(DoReMiConfig, args.config, _overrides(args, DoReMiConfig), DoReMiConfig.COMMAND))
    report_result(json.dumps({"method": "doremi", "weights": result.as_dict()}))


def cmd_weights_doge(args) -> None:
    from mixweight.core.config import load_config
    from mixweight.domain.doge_run import DoGEConfig, run_doge

    result = run_doge(load_config(DoGEConfig, args.config, _overrides(args, DoGEConfig), DoGEConfig.COMMAND))
    report_result(json.dumps({"method": "doge", "weights": result.as_dict()}))


def cmd_weights_regmix(args) -> None:
    from mixweight.core.config import load_config
    from mixweight.domain.regmix_run import RegMixConfig, run_regmix

    result = run_regmix(load_config(RegMixConfig, args.config, _overrides(args, RegMixConfig)))
    report_result(json.dumps({"method": "regmix", "weights": result.as_dict()}))


def cmd_weights_export(args) -> None:
    from mixweight.core.artifact import load_domain_weights
    from mixweight.domain.export import cap_to_budget, export_weights

    weights = load_domain_weights(args.file)
    tokens = None
    if args.data is not None and (args.token_budget is not None or args.max_epochs is not None):
        from mixweight.data.manifest import load_manifest
        from mixweight.data.synthetic import resolve_corpus

        tokens = load_manifest(resolve_corpus(args.data)).train_tokens()
    weights, note = cap_to_budget(weights, args.token_budget, args.max_epochs, tokens)
    if note:
        print(f"mixweight weights export: {note}", file=sys.stderr)
    print(export_weights(weights, args.format))


def cmd_weights_verify(args) -> None:
    from mixweight.domain.verify import verify_file

    print(verify_file(args.file, args.tolerance))


def cmd_pipeline(args) -> None:
    import dataclasses

    from mixweight.pipeline import load_pipeline_config, run_pipeline

    config = load_pipeline_config(args.config)
    if args.progress is not None:
        config = dataclasses.replace(config, progress=args.progress)
    run_pipeline(config, args.out, rerun_changed=args.rerun_changed)


def cmd_compare(args) -> None:
    from mixweight.report import compare_runs

    bad = [item for item in args.weights or [] if "=" not in item or not item.split("=", 1)[0]]
    if bad:
        raise MixweightError(f"compare: --weights {bad[0]!r}: expected METHOD=FILE, e.g. doremi=weights/doremi.json")
    weights = dict(item.split("=", 1) for item in args.weights) if args.weights else None
    labels = args.labels.split(",") if args.labels else None
    report = compare_runs(
        args.runs, args.out, weights_files=weights, corpus=args.data, labels=labels, baseline=args.baseline
    )
    print(f"wrote {args.out}/report.md ({len(report['arms'])} arms, baseline {report['baseline']})")


def cmd_doctor(args) -> None:
    from mixweight.doctor import run_doctor

    print(run_doctor(as_json=args.json))


def build_parser() -> argparse.ArgumentParser:
    from mixweight.train.config import TrainConfig

    parser = ExactFlagParser(prog="mixweight", description=__import__("mixweight").__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="make a corpus").add_subparsers(dest="data_command", required=True)
    synth = data.add_parser("synth", help="the built-in synthetic multi-domain corpus")
    synth.add_argument(
        "--out",
        required=True,
        help="corpus directory to write (new, empty, or a corpus to replace with --overwrite), "
        "or a URL (s3://bucket/corpus, file:///DIR, ...) to upload to, manifest last; required",
    )
    synth.add_argument("--seed", type=int, default=0, help="seed of every random draw (default: %(default)s)")
    synth.add_argument(
        "--tokens-per-domain",
        type=int,
        default=131_072,
        help="training tokens per domain, rounded down to whole blocks (default: %(default)s)",
    )
    synth.add_argument("--seq-len", type=int, default=128, help="tokens per block (default: %(default)s)")
    synth.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a different mixweight corpus already in --out; never other files (default: %(default)s)",
    )
    _add_cache_dir(synth)
    synth.set_defaults(func=cmd_synth)

    prepare = data.add_parser(
        "prepare", help="tokenize real text (JSONL[.gz|.zst], Parquet, HF dataset dir) into per-domain streams"
    )
    prepare.add_argument(
        "--input",
        required=True,
        help="a .jsonl/.json[.gz|.zst] or .parquet file, a `datasets` save_to_disk directory, or a "
        "directory of such files (other files are skipped and listed); required",
    )
    prepare.add_argument(
        "--out",
        required=True,
        help="corpus directory to write, outside --input (new, empty, or a corpus to replace with "
        "--overwrite), or a URL to upload to (s3://bucket/corpus, ...); required",
    )
    prepare.add_argument(
        "--domain-field",
        default="meta.redpajama_set_name",
        help="record field holding the domain name, dotted for nested fields (default: %(default)s)",
    )
    prepare.add_argument(
        "--text-field",
        default="text",
        help="record field holding the document text, dotted for nested fields (default: %(default)s)",
    )
    prepare.add_argument(
        "--tokenizer",
        default="byte",
        help="byte (UTF-8 bytes + EOS) | PATH (a local Hugging Face tokenizer directory) | "
        "bpe:VOCAB (train a byte-level BPE of VOCAB ids on the training text) "
        "(default: %(default)s)",
    )
    prepare.add_argument("--seq-len", type=int, default=512, help="tokens per block (default: %(default)s)")
    prepare.add_argument(
        "--val-fraction",
        type=float,
        default=0.01,
        help="fraction of each domain's documents held out for validation, chosen by a hash of "
        "the text; in (0, 1), and every domain gets at least one block (default: %(default)s)",
    )
    prepare.add_argument(
        "--num-proc",
        type=int,
        default=None,
        help="tokenizer processes; unset or 1 tokenizes in this process (default: %(default)s)",
    )
    prepare.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a different mixweight corpus already in --out; never other files (default: %(default)s)",
    )
    _add_cache_dir(prepare)
    prepare.set_defaults(func=cmd_prepare)

    train = commands.add_parser("train", help="train a model; every flag may also come from --config FILE.yaml")
    train.add_argument(
        "--config", default=None, help="YAML file with any of the keys below; flags given override it (default: none)"
    )
    _add_config_flags(train, TrainConfig)
    _add_cache_dir(train)
    train.set_defaults(func=cmd_train)

    weights = commands.add_parser("weights", help="domain weights: compute (doremi, doge, regmix), export or verify")
    weights_commands = weights.add_subparsers(dest="weights_command", required=True)
    for name, cls_path, func in (
        ("doremi", "mixweight.domain.doremi_run:DoReMiConfig", cmd_weights_doremi),
        ("doge", "mixweight.domain.doge_run:DoGEConfig", cmd_weights_doge),
        ("regmix", "mixweight.domain.regmix_run:RegMixConfig", cmd_weights_regmix),
    ):
        module, cls_name = cls_path.split(":")
        cls = getattr(__import__(module, fromlist=[cls_name]), cls_name)
        how = "a swarm of small proxy runs and a regression" if name == "regmix" else "a proxy model"
        method = weights_commands.add_parser(name, help=f"{name} domain weights from {how}")
        method.add_argument(
            "--config",
            default=None,
            help="YAML file with any of the keys below; flags given override it (default: none)",
        )
        _add_config_flags(method, cls)
        _add_cache_dir(method)
        method.set_defaults(func=func)
    export = weights_commands.add_parser("export", help="print a weights file for other trainers")
    export.add_argument(
        "file",
        help="a domain_weights.json: from weights doremi, doge or regmix, the RUN/domain_weights.json of an online "
        "mixing run (domain_weights online:odm|online:doremi), or hand-written",
    )
    export.add_argument(
        "--format",
        required=True,
        choices=["streams-yaml", "megatron", "json"],
        help="streams-yaml (llm-foundry streams with proportions), megatron (a --data-path list: "
        "weight path ...) or json ({domain: weight}); required, no default",
    )
    export.add_argument(
        "--token-budget",
        type=int,
        default=None,
        help="tokens the run will train on, T: prints each domain's planned epochs (w_d T / tokens_d) on stderr "
        "(default: none)",
    )
    export.add_argument(
        "--max-epochs",
        type=float,
        default=None,
        help="move the weights within E passes over each domain's tokens in T (KL projection; needs "
        "--token-budget; default: none)",
    )
    export.add_argument(
        "--data",
        default=None,
        help="corpus whose token counts --max-epochs uses (default: the file's provenance.domain_token_counts)",
    )
    export.set_defaults(func=cmd_weights_export)
    verify = weights_commands.add_parser(
        "verify",
        help="check that an artifact's weights follow from its recorded signals (doremi, doge: replay the update; "
        "regmix: refit the swarm; online:odm, online:doremi: recompute each phase); exit 0 if they do",
    )
    verify.add_argument(
        "file", help="a domain_weights.json written by `weights doremi|doge|regmix` or an online run (RUN/...)"
    )
    verify.add_argument(
        "--tolerance",
        type=float,
        default=1e-6,
        help="largest allowed deviation of a recorded weight from the replay (default: 1e-6)",
    )
    verify.set_defaults(func=cmd_weights_verify)

    pipeline = commands.add_parser("pipeline", help="the main job: weights, arms and report from one YAML")
    pipeline.add_argument("config", help="pipeline YAML: data, train, doremi, doge, arms, seeds, report, eval")
    pipeline.add_argument(
        "--out", required=True, help="output directory: corpus, weights, one run per arm and seed, report (required)"
    )
    pipeline.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show progress bars (only on a terminal); overrides the YAML's progress (default: the YAML's, else on)",
    )
    pipeline.add_argument(
        "--rerun-changed",
        action="store_true",
        help="when the config changed for stages already run in --out, move their directories "
        "aside (<stage dir>.replaced-<time>-<keys>; nothing is deleted) and run them again; "
        "without it the pipeline stops and names the changed keys (default: off)",
    )
    _add_cache_dir(pipeline)
    pipeline.set_defaults(func=cmd_pipeline)

    evaluate = commands.add_parser("eval", help="per-domain validation loss of a run's checkpoint")
    evaluate.add_argument("run", help="a run directory written by mixweight train")
    evaluate.add_argument("--data", default=None, help="corpus directory or URL (default: the run's)")
    evaluate.add_argument("--checkpoint", default=None, help="step-N or a path (default: the newest)")
    _add_cache_dir(evaluate)
    evaluate.set_defaults(func=cmd_eval)

    compare = commands.add_parser("compare", help="tables and plots comparing finished runs")
    compare.add_argument(
        "runs", nargs="+", help="run directories; runs with the same --labels entry are seeds of one arm"
    )
    compare.add_argument("--out", required=True, help="directory for report.md, report.json and figures (required)")
    compare.add_argument("--labels", default=None, help="comma-separated arm name per run (default: directory names)")
    compare.add_argument(
        "--weights",
        action="append",
        default=None,
        metavar="METHOD=FILE",
        help="a domain_weights.json to show, labelled METHOD (repeatable; default: the files the runs trained on)",
    )
    compare.add_argument("--data", default=None, help="corpus directory (default: the runs')")
    compare.add_argument(
        "--baseline", default=None, help="arm whose final loss is the target (default: uniform, else the first)"
    )
    _add_cache_dir(compare)
    compare.set_defaults(func=cmd_compare)

    doctor = commands.add_parser(
        "doctor",
        help="versions, device, extras and stale shared memory: paste its output "
        "into a bug report (reads only, changes nothing)",
    )
    doctor.add_argument("--json", action="store_true", help="print JSON instead of text (default: text)")
    doctor.set_defaults(func=cmd_doctor)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    _refuse_owned_flags(parser, argv)
    args = parser.parse_args(argv)
    from mixweight.core.distributed import close_world, init_world
    from mixweight.data.remote import set_cache_dir

    set_cache_dir(getattr(args, "cache_dir", None))  # where remote corpora are cached, for every command

    # Under torchrun, one process group serves every stage of the command (a DoReMi run trains twice).
    world = init_world()
    try:
        with held_deprecations():  # a refused command prints its error line alone
            args.func(args)
    except MixweightError as exc:
        print(f"mixweight: error: {exc}", file=sys.stderr)
        sys.exit(2)
    finally:
        close_world(world)
