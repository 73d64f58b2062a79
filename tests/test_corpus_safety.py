"""Hostile or careless corpus input: nothing runs code, nothing deletes what mixweight did not write,
every mistake is one line, and numbers that cannot be measured are never reported as 0.0."""

from __future__ import annotations

import errno
import gzip
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from streaming import MDSWriter

from mixweight.cli import build_parser, main
from mixweight.data.manifest import load_manifest
from mixweight.data.prepare import prepare_corpus
from mixweight.data.streams import read_stream
from mixweight.data.synthetic import write_synthetic_corpus
from mixweight.data.tokenize_pass import val_score
from mixweight.errors import MixweightError

SEQ = 64


@pytest.fixture
def corpus(tmp_path) -> Path:
    out = tmp_path / "corpus"
    write_synthetic_corpus(out, tokens_per_domain=1024, seq_len=SEQ)  # 16 train blocks, 8 val blocks per domain
    return out


def _one_step_train(corpus, spec, out, *extra) -> list[str]:
    """The argv of `mixweight train` for one step of batch 2."""
    argv = ["train", "--data", str(corpus), "--model", spec, "--out", str(out), "--steps", "1", "--batch-size", "2"]
    return argv + list(extra)


def write_raw_stream(stream: Path, columns: dict, samples: list[dict]) -> None:
    shutil.rmtree(stream, ignore_errors=True)
    with MDSWriter(out=str(stream), columns=columns, progress_bar=False) as writer:
        for sample in samples:
            writer.write(sample)


class TouchOnLoad:
    """Unpickling this calls open(marker, 'w'): proof that a `pkl` column was decoded (runs code)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


# --- 1. a corpus never runs code ---------------------------------------------------------------
@pytest.mark.parametrize("split", ["train", "val"])
def test_a_pickled_column_is_refused_before_any_sample_is_decoded(corpus, tmp_path, tiny_spec, cli_refuses, split):
    marker = tmp_path / "code-ran"
    blocks = load_manifest(corpus).splits[split]["noise"].blocks
    write_raw_stream(
        corpus / split / "noise",
        {"tokens": "pkl", "domain": "int32"},
        [{"tokens": TouchOnLoad(marker), "domain": np.int32(1)}] * blocks,
    )
    line = cli_refuses(_one_step_train(corpus, tiny_spec, tmp_path / "run", "--eval-blocks", "2"))
    assert f"{split}/noise" in line and "'tokens'" in line and "'pkl'" in line and "ndarray:uint16|uint32:64" in line
    assert not marker.exists()
    assert not (tmp_path / "run").exists()  # refused before the run directory was made
    with pytest.raises(MixweightError, match="'pkl'"):  # the shard-by-shard reader checks too
        read_stream(corpus / split / "noise")
    assert not marker.exists()


@pytest.mark.parametrize(
    "columns, sample, named",
    [
        ({"tokens": "json", "domain": "int32"}, {"tokens": [1] * SEQ, "domain": np.int32(1)}, "'json'"),
        (
            {"tokens": "ndarray:uint16:32", "domain": "int32"},
            {"tokens": np.zeros(32, np.uint16), "domain": np.int32(1)},
            "'ndarray:uint16:32'",
        ),  # another block length
        (
            {"tokens": "ndarray:int64:64", "domain": "int32"},
            {"tokens": np.zeros(SEQ, np.int64), "domain": np.int32(1)},
            "'ndarray:int64:64'",
        ),
        (
            {"tokens": "ndarray:uint16:64", "domain": "pkl"},
            {"tokens": np.zeros(SEQ, np.uint16), "domain": 1},
            "'domain' encoded as 'pkl'",
        ),
        (
            {"tokens": "ndarray:uint16:64", "domain": "int32", "extra": "str"},
            {"tokens": np.zeros(SEQ, np.uint16), "domain": np.int32(1), "extra": "x"},
            "'extra'",
        ),
    ],
)
def test_only_mixweight_encodings_are_accepted(corpus, columns, sample, named):
    blocks = load_manifest(corpus).splits["val"]["noise"].blocks
    write_raw_stream(corpus / "val" / "noise", columns, [sample] * blocks)
    with pytest.raises(MixweightError) as err:
        load_manifest(corpus)
    message = str(err.value)
    assert named in message and "index.json" in message and "domain 'noise' (val)" in message and "accepted" in message


# --- 2. --overwrite replaces only a corpus -----------------------------------------------------
def jsonl_records(path: Path, domains=("a", "b"), n=40) -> Path:
    rng = random.Random(0)
    words = "lorem ipsum dolor sit amet".split()
    lines = [
        json.dumps(
            {"text": " ".join(rng.choice(words) for _ in range(30)) + f" {i}", "meta": {"redpajama_set_name": d}}
        )
        for i in range(n)
        for d in domains
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_out_overlapping_the_input_is_refused_and_the_input_survives(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    source = jsonl_records(raw / "data.jsonl")
    before = source.read_bytes()
    # The input itself (file or directory), inside it, holding it.
    for given, out in ((source, source), (raw, raw), (raw, raw / "corpus"), (source, raw), (raw, tmp_path)):
        for overwrite in (False, True):
            with pytest.raises(MixweightError, match="overlaps --input") as err:
                prepare_corpus(given, out, seq_len=16, val_fraction=0.2, overwrite=overwrite, progress=False)
            assert "--overwrite" not in str(err.value)
    assert source.read_bytes() == before and sorted(p.name for p in raw.iterdir()) == ["data.jsonl"]


def test_unrelated_files_are_never_replaced_even_with_overwrite(tmp_path, cli_refuses):
    source = jsonl_records(tmp_path / "in.jsonl")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    for argv in (["data", "prepare", "--input", str(source), "--seq-len", "16"], ["data", "synth", "--seq-len", "64"]):
        for extra in ([], ["--overwrite"]):
            line = cli_refuses(argv + ["--out", str(mine)] + extra)
            assert "not a mixweight corpus" in line and "thesis.tex" in line and "--overwrite" not in line
    assert (mine / "thesis.tex").read_text() == "years of work"
    assert not list(tmp_path.glob(".mine.*"))


def test_a_corpus_with_foreign_files_is_not_replaced(corpus):
    (corpus / "notes.txt").write_text("mine")
    with pytest.raises(MixweightError, match="notes.txt"):
        write_synthetic_corpus(corpus, seed=5, tokens_per_domain=1024, seq_len=SEQ, overwrite=True)
    assert (corpus / "notes.txt").read_text() == "mine" and load_manifest(corpus).source["seed"] == 0


@pytest.mark.parametrize("command", ["prepare", "synth"])
def test_out_dot_is_refused_without_a_crash_or_leftovers(tmp_path, monkeypatch, cli_refuses, command):
    source = jsonl_records(tmp_path / "in.jsonl")
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    argv = (
        ["data", "prepare", "--input", str(source), "--seq-len", "16"]
        if command == "prepare"
        else ["data", "synth", "--seq-len", "64", "--tokens-per-domain", "1024"]
    )
    for extra in ([], ["--overwrite"]):
        line = cli_refuses(argv + ["--out", "."] + extra)
        assert "current directory" in line and str(here) in line
    assert here.is_dir() and not any(here.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["here", "in.jsonl"]  # no ..partial-* nor .here.partial-*


# --- 3. a swap cut between its two renames is recovered ----------------------------------------
@pytest.mark.parametrize("retired_name", [".corpus.retired", ".corpus.partial-retired"])  # new and older versions
def test_a_swap_killed_between_its_renames_is_rolled_back(corpus, retired_name):
    stamp = (corpus / "manifest.json").read_bytes()
    retired = corpus.parent / retired_name
    corpus.rename(retired)  # first rename done
    staging = corpus.parent / ".corpus.partial-abc123"  # the new copy, never renamed
    shutil.copytree(retired, staging)
    # The next run finds the old corpus again: a different config is refused (it is a corpus, not lost) ...
    with pytest.raises(MixweightError, match="already holds a different corpus"):
        write_synthetic_corpus(corpus, seed=9, tokens_per_domain=1024, seq_len=SEQ)
    assert (corpus / "manifest.json").read_bytes() == stamp and not retired.exists()
    load_manifest(corpus)
    # ... and the same config is a no-op on the restored copy.
    write_synthetic_corpus(corpus, tokens_per_domain=1024, seq_len=SEQ)
    assert (corpus / "manifest.json").read_bytes() == stamp


def test_a_swap_killed_after_its_second_rename_is_finished(corpus):
    retired = corpus.parent / ".corpus.retired"
    shutil.copytree(corpus, retired)  # the old copy not yet removed; the new one in place
    write_synthetic_corpus(corpus, tokens_per_domain=1024, seq_len=SEQ)
    assert not retired.exists() and load_manifest(corpus).source["seed"] == 0


def test_a_recovery_that_would_lose_a_copy_stops(corpus):
    retired = corpus.parent / ".corpus.retired"
    corpus.rename(retired)
    corpus.mkdir()
    (corpus / "new.txt").write_text("user's")
    with pytest.raises(MixweightError, match="previous corpus at"):
        write_synthetic_corpus(corpus, tokens_per_domain=1024, seq_len=SEQ)
    assert (retired / "manifest.json").is_file() and (corpus / "new.txt").is_file()


# --- 4. every domain gets a validation block ---------------------------------------------------
def long_documents(prefix: str, n: int, length: int, cutoff: float) -> list[str]:
    """n documents of `length` characters whose hash scores are all >= cutoff (none would go to val)."""
    docs, i = [], 0
    while len(docs) < n:
        text = f"{prefix} {i} " + "x" * length
        if val_score(text) >= cutoff:
            docs.append(text)
        i += 1
    return docs


def test_a_big_domain_of_few_documents_gets_a_validation_block(tmp_path, capsys):
    docs = long_documents("book", 5, 400, cutoff=0.05)
    records = [{"text": t, "meta": {"redpajama_set_name": "Books"}} for t in docs]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in records))
    main(
        [
            "data",
            "prepare",
            "--input",
            str(source),
            "--out",
            str(tmp_path / "a"),
            "--seq-len",
            "64",
            "--val-fraction",
            "0.05",
        ]
    )
    out = capsys.readouterr().out
    assert "domain 'Books': moved 1 document(s)" in out
    manifest = load_manifest(tmp_path / "a")
    lowest = min(docs, key=val_score)
    assert manifest.source["moved_to_val"]["Books"] == {"documents": 1, "tokens": len(lowest) + 1}  # bytes + EOS
    assert manifest.splits["val"]["Books"].documents == 1 and manifest.splits["train"]["Books"].documents == 4
    val = read_stream(tmp_path / "a" / "val" / "Books").reshape(-1)
    assert bytes(val.astype(np.uint8).tolist()).decode() == lowest[: len(val)]  # the lowest-scoring document
    # A function of the documents alone: the same documents in another order move the same one.
    random.Random(1).shuffle(records)
    shuffled = tmp_path / "shuffled.jsonl"
    shuffled.write_text("".join(json.dumps(r) + "\n" for r in records))
    again = prepare_corpus(shuffled, tmp_path / "b", seq_len=64, val_fraction=0.05, progress=False)
    assert np.array_equal(read_stream(tmp_path / "b" / "val" / "Books"), read_stream(tmp_path / "a" / "val" / "Books"))
    assert again.source["moved_to_val"] == manifest.source["moved_to_val"]


# --- 5. no validation data is never a loss of 0.0 ----------------------------------------------
def test_val_fraction_zero_is_refused_with_the_reason(tmp_path):
    source = jsonl_records(tmp_path / "in.jsonl")
    with pytest.raises(MixweightError, match=r"--val-fraction 0: must be in \(0, 1\); every domain needs validation"):
        prepare_corpus(source, tmp_path / "out", seq_len=16, val_fraction=0, progress=False)
    assert not (tmp_path / "out").exists()


def test_a_corpus_without_validation_blocks_is_refused(corpus, tmp_path, tiny_spec, cli_refuses):
    from mixweight.data.streams import write_stream

    shutil.rmtree(corpus / "val" / "copy")
    write_stream(corpus / "val" / "copy", iter([]), 6, SEQ, 256)
    raw = json.loads((corpus / "manifest.json").read_text())
    raw["splits"]["val"]["copy"].update(blocks=0, tokens=0, documents=0)
    (corpus / "manifest.json").write_text(json.dumps(raw))
    line = cli_refuses(_one_step_train(corpus, tiny_spec, tmp_path / "run"))
    assert "domain 'copy' (val) is empty: no validation blocks" in line
    assert not (tmp_path / "run").exists()


def test_evaluating_zero_blocks_is_refused_not_zero():
    from mixweight.train.validation import evaluate_domains

    with pytest.raises(MixweightError, match="'copy' has no validation blocks"):
        evaluate_domains(torch.nn.Linear(1, 1), {"copy": torch.zeros((0, 0), dtype=torch.long)}, batch_size=2)


# --- 6. skipped input files are listed; gzip is read -------------------------------------------
def test_skipped_files_are_listed_and_gzip_is_read(tmp_path, capsys):
    raw = tmp_path / "raw"
    raw.mkdir()
    jsonl_records(raw / "a.jsonl", domains=("a",))
    gz_text = jsonl_records(tmp_path / "b.tmp", domains=("b",)).read_bytes()
    (raw / "b.jsonl.gz").write_bytes(gzip.compress(gz_text))
    (raw / "old.jsonl.bak").write_text("stale")
    (raw / ".DS_Store").write_text("x")
    main(
        [
            "data",
            "prepare",
            "--input",
            str(raw),
            "--out",
            str(tmp_path / "out"),
            "--seq-len",
            "16",
            "--val-fraction",
            "0.2",
        ]
    )
    out = capsys.readouterr().out
    assert "skipped 2 file(s)" in out and "old.jsonl.bak (unsupported type)" in out and ".DS_Store (hidden)" in out
    manifest = load_manifest(tmp_path / "out")
    assert manifest.domains == ["a", "b"]  # the gzip file was read
    assert manifest.source["skipped_files"] == [".DS_Store (hidden)", "old.jsonl.bak (unsupported type)"]
    assert manifest.source["num_files"] == 2


def test_an_input_of_nothing_readable_names_what_it_found(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "x.bak").write_text("a")
    (raw / "y.csv").write_text("b")
    with pytest.raises(MixweightError, match=r"no readable files \(found only: x.bak \(unsupported type\), y.csv"):
        prepare_corpus(raw, tmp_path / "out", progress=False)
    (raw / "broken.jsonl.gz").write_bytes(b"not gzip at all")
    with pytest.raises(MixweightError, match=r"broken.jsonl.gz: not a valid gzip stream"):
        prepare_corpus(raw, tmp_path / "out", seq_len=16, val_fraction=0.2, progress=False)
    assert not (tmp_path / "out").exists()


# --- 7. domain names are one plain path component; disk full is one line -----------------------
@pytest.mark.parametrize(
    "name, problem",
    [
        ("x" * 300, "is 300 UTF-8 bytes long"),
        ("字" * 100, "is 300 UTF-8 bytes long"),
        ("Arxiv papers", "whitespace"),
        ("tab\there", "whitespace"),
        ("bell\x07", "control character"),
        ("", "is empty"),
        (".", "starts with '.'"),
        ("..", "starts with '.'"),
        ("a/b", "'/'"),
        ("a\\b", "'\\\\'"),
    ],
)
def test_unsafe_domain_names_are_one_line_errors(tmp_path, cli_refuses, name, problem):
    source = tmp_path / "in.jsonl"
    source.write_text(
        json.dumps({"text": "hello world " * 20, "meta": {"redpajama_set_name": "ok"}})
        + "\n"
        + json.dumps({"text": "more text " * 20, "meta": {"redpajama_set_name": name}})
        + "\n"
    )
    line = cli_refuses(
        ["data", "prepare", "--input", str(source), "--out", str(tmp_path / "new" / "out"), "--seq-len", "16"]
    )
    assert "in.jsonl line 2" in line and problem in line and "1-100 UTF-8 bytes" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]  # not even the parent it made


def test_a_hand_edited_manifest_meets_the_same_name_rule(corpus):
    raw = json.loads((corpus / "manifest.json").read_text())
    raw["domains"][1] = "white noise"
    for split in ("train", "val"):
        raw["splits"][split]["white noise"] = raw["splits"][split].pop("noise")
    (corpus / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(MixweightError, match=r"domain 'white noise' contains whitespace"):
        load_manifest(corpus)


def test_disk_full_during_prepare_is_one_line_and_leaves_nothing(tmp_path, cli_refuses, monkeypatch):
    import mixweight.data.prepare as prepare

    def full_disk(out_dir, *args, **kwargs):
        Path(out_dir).mkdir(parents=True)
        (Path(out_dir) / "shard.00000.mds").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device", str(Path(out_dir) / "shard.00000.mds"))

    monkeypatch.setattr(prepare, "write_stream", full_disk)
    source = jsonl_records(tmp_path / "in.jsonl")
    out = tmp_path / "out"
    line = cli_refuses(["data", "prepare", "--input", str(source), "--out", str(out), "--seq-len", "16"])
    assert str(out) in line and "No space left on device" in line and "nothing was written" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


# --- 8. every data flag says what it does and its default --------------------------------------
@pytest.mark.parametrize("command", ["synth", "prepare"])
def test_every_data_flag_has_help_and_its_default(command):
    parser = build_parser()
    data = next(a for a in parser._subparsers._group_actions[0].choices["data"]._actions if a.dest == "data_command")
    for action in data.choices[command]._actions:
        if action.dest == "help":
            continue
        assert action.help and len(action.help) > 15, action.option_strings
        says_default = "(default:" in action.help or "%(default)s" in action.help
        assert says_default or (action.required and "required" in action.help), action.option_strings


def test_stale_staging_of_another_corpus_is_left_alone(tmp_path):
    """`corpus[1]` as a glob would match `.corpus1.partial-*`: another corpus's staging is not ours to remove."""
    other = tmp_path / ".corpus1.partial-xyz"
    other.mkdir()
    stale = tmp_path / ".corpus[1].partial-old"
    stale.mkdir()
    write_synthetic_corpus(tmp_path / "corpus[1]", tokens_per_domain=1024, seq_len=SEQ)
    assert other.is_dir() and not stale.exists()


def test_moving_several_short_documents_keeps_both_splits_whole(tmp_path):
    docs = long_documents("note", 12, 25, cutoff=0.05)  # about 33 bytes each: a 64-token block needs 2
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"text": t, "meta": {"redpajama_set_name": "N"}}) + "\n" for t in docs))
    manifest = prepare_corpus(source, tmp_path / "out", seq_len=64, val_fraction=0.05, progress=False)
    moved = sorted(docs, key=val_score)[:2]
    assert manifest.source["moved_to_val"]["N"]["documents"] == 2

    def decoded(split):
        ids = read_stream(tmp_path / "out" / split / "N").reshape(-1).tolist()
        return bytes(i for i in ids if i != 256).decode(errors="replace"), ids.count(256)

    val_text, _ = decoded("val")
    assert val_text == "".join(d for d in docs if d in moved)[: len(val_text)]  # in input order
    train_text, _ = decoded("train")
    kept = "".join(d for d in docs if d not in moved)
    assert train_text == kept[: len(train_text)] and len(train_text) >= 64 * 4 - 8
    assert manifest.splits["train"]["N"].documents == 10 and manifest.splits["val"]["N"].documents == 2


def test_an_identical_corpus_is_a_noop_even_from_inside_it(corpus, monkeypatch):
    monkeypatch.chdir(corpus / "train")  # e.g. --data synthetic while the shell sits in the cached corpus
    stamp = (corpus / "manifest.json").stat().st_mtime_ns
    write_synthetic_corpus(corpus, tokens_per_domain=1024, seq_len=SEQ)
    assert (corpus / "manifest.json").stat().st_mtime_ns == stamp
    with pytest.raises(MixweightError, match="current directory or holds it"):
        write_synthetic_corpus(corpus, seed=3, tokens_per_domain=1024, seq_len=SEQ, overwrite=True)
    assert load_manifest(corpus).source["seed"] == 0
