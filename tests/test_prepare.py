"""`prepare_corpus`: real text in every supported format -> the same corpus layout as the synthetic one."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import numpy as np
import pytest
from streaming.base.format import reader_from_json

from mixweight.data.manifest import load_manifest
from mixweight.data.prepare import prepare_corpus
from mixweight.data.streams import read_stream
from mixweight.data.tokenize_pass import split_of, val_score
from mixweight.data.tokenizer import BPE_EOS, tokenizer_for_corpus
from mixweight.errors import MixweightError

DOMAINS = ["RedPajamaWikipedia", "RedPajamaGithub", "RedPajamaBook"]
WORDS = {
    "RedPajamaWikipedia": (
        "the city is located in the north of the country and has a population of about people"
    ).split(),
    "RedPajamaGithub": "def return self import from class if else for in range print value none true false".split(),
    "RedPajamaBook": "she said that he would never come back to the house again before the winter night fell".split(),
}


def make_records(n_per_domain: int = 30, seed: int = 0) -> list[dict]:
    """SlimPajama-style records, domains interleaved, with a non-ASCII word now and then."""
    rng = random.Random(seed)
    records = []
    for i in range(n_per_domain):
        for domain in DOMAINS:
            words = [rng.choice(WORDS[domain]) for _ in range(rng.randint(5, 25))]
            if i % 7 == 0:
                words.append("café ☕")
            records.append({"text": " ".join(words) + f" #{i}", "meta": {"redpajama_set_name": domain}})
    return records


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture
def records() -> list[dict]:
    return make_records()


@pytest.fixture
def jsonl(tmp_path, records) -> Path:
    return write_jsonl(tmp_path / "corpus.jsonl", records)


def read_domain_column(stream_dir: Path) -> list[int]:
    index = json.loads((stream_dir / "index.json").read_text())
    out = []
    for info in index["shards"]:
        shard = reader_from_json(str(stream_dir), None, info)
        out.extend(int(shard[i]["domain"]) for i in range(shard.samples))
    return out


def expected_docs(records, domain, split, val_fraction):
    return [
        r["text"]
        for r in records
        if r["meta"]["redpajama_set_name"] == domain
        and r["text"].strip()
        and split_of(r["text"], val_fraction) == split
    ]


def assert_round_trip(corpus: Path, records: list[dict], val_fraction: float) -> None:
    """Blocks decode to the input documents, in order, up to the dropped remainder; domain ids match."""
    manifest = load_manifest(corpus)
    tok = tokenizer_for_corpus(corpus, manifest.tokenizer)
    assert manifest.domains == sorted(DOMAINS)
    for domain_id, domain in enumerate(manifest.domains):
        for split in ("train", "val"):
            stats = manifest.splits[split][domain]
            stream = manifest.stream_dir(corpus, split, domain)
            blocks = read_stream(stream)
            assert blocks.shape == ((stats.blocks, manifest.seq_len) if stats.blocks else (0, 0))
            assert stats.tokens == stats.blocks * manifest.seq_len
            assert read_domain_column(stream) == [domain_id] * stats.blocks
            docs = expected_docs(records, domain, split, val_fraction)
            assert stats.documents == len(docs)
            flat = blocks.reshape(-1).tolist()
            ends = [i for i, t in enumerate(flat) if t == manifest.eos_id]
            start, decoded = 0, []
            for end in ends:
                decoded.append(tok.decode(flat[start:end]))
                start = end + 1
            assert decoded == docs[: len(decoded)]
            assert decoded or split == "val"  # training blocks always hold whole documents here
            # What is missing after the last complete document is exactly the tail in the blocks plus the remainder.
            lengths = [len(ids) + 1 for ids in tok.encode_batch(docs)]  # every document plus its EOS
            remainder = manifest.skipped[domain]["remainder_tokens"][split]
            assert sum(lengths[len(decoded) :]) == len(flat) - start + remainder
            assert stats.tokens + remainder == sum(lengths)


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def counts(manifest) -> tuple:
    return (
        manifest.domains,
        {s: {d: vars(v) for d, v in per.items()} for s, per in manifest.splits.items()},
        manifest.skipped,
    )


# --- happy paths --------------------------------------------------------------------------------
def test_byte_round_trip(tmp_path, jsonl, records):
    manifest = prepare_corpus(jsonl, tmp_path / "out", seq_len=32, val_fraction=0.2, progress=False)
    assert (manifest.vocab_size, manifest.eos_id, manifest.tokenizer) == (
        257,
        256,
        {"kind": "byte", "fingerprint": "byte-v1"},
    )
    assert manifest.irreducible_loss == {} and manifest.config_hash
    assert manifest.source["domain_field"] == "meta.redpajama_set_name" and manifest.source["val_fraction"] == 0.2
    for d in DOMAINS:
        assert manifest.splits["train"][d].blocks > 3 and manifest.splits["val"][d].blocks >= 1
        assert manifest.splits["train"][d].documents + manifest.splits["val"][d].documents == 30
    assert_round_trip(tmp_path / "out", records, 0.2)


def test_formats_give_same_counts(tmp_path, jsonl, records):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    reference = counts(prepare_corpus(jsonl, tmp_path / "ref", seq_len=32, val_fraction=0.2, progress=False))
    zst = tmp_path / "corpus.jsonl.zst"
    zst.write_bytes(zstandard.ZstdCompressor().compress(jsonl.read_bytes()))
    parquet = tmp_path / "corpus.parquet"
    pq.write_table(pa.Table.from_pylist(records), parquet, row_group_size=17)
    hf_dir = tmp_path / "hf_dataset"
    datasets.Dataset.from_list(records).save_to_disk(str(hf_dir))
    shards = tmp_path / "shards"  # a directory of several files, read in sorted order
    shards.mkdir()
    write_jsonl(shards / "b.jsonl", records[40:])
    write_jsonl(shards / "a.jsonl", records[:40])
    for i, source in enumerate([zst, parquet, hf_dir, shards]):
        manifest = prepare_corpus(source, tmp_path / f"out{i}", seq_len=32, val_fraction=0.2, progress=False)
        assert counts(manifest) == reference, source
    assert_round_trip(tmp_path / "out3", records, 0.2)


def test_deterministic_bytes_and_parallel(tmp_path, jsonl):
    prepare_corpus(jsonl, tmp_path / "a", seq_len=32, val_fraction=0.1, progress=False)
    prepare_corpus(jsonl, tmp_path / "b", seq_len=32, val_fraction=0.1, progress=False, num_proc=2)
    assert tree_bytes(tmp_path / "a") == tree_bytes(tmp_path / "b")


def test_val_split_is_by_text_hash(tmp_path, records):
    text = records[0]["text"]
    assert split_of(text, 0.3) == split_of(text, 0.3) and 0 <= val_score(text) < 1
    assert split_of(text, 0.0) == "train"
    scores = [val_score(r["text"]) for r in records]
    assert 0.3 < np.mean(scores) < 0.7  # spread over [0, 1)
    # Reordering the input changes neither which documents are in val nor the per-domain counts.
    shuffled = list(records)
    random.Random(1).shuffle(shuffled)
    a = prepare_corpus(
        write_jsonl(tmp_path / "a.jsonl", records), tmp_path / "a", seq_len=16, val_fraction=0.3, progress=False
    )
    b = prepare_corpus(
        write_jsonl(tmp_path / "b.jsonl", shuffled), tmp_path / "b", seq_len=16, val_fraction=0.3, progress=False
    )
    for split in ("train", "val"):
        for d in DOMAINS:
            assert a.splits[split][d].documents == b.splits[split][d].documents
    assert_round_trip(tmp_path / "b", shuffled, 0.3)


def test_bpe_trains_and_round_trips(tmp_path, jsonl, records):
    manifest = prepare_corpus(
        jsonl, tmp_path / "out", tokenizer="bpe:300", seq_len=32, val_fraction=0.2, progress=False
    )
    file = tmp_path / "out" / "tokenizer" / "tokenizer.json"
    assert manifest.vocab_size == 300 and manifest.tokenizer["kind"] == "bpe"
    assert manifest.tokenizer["fingerprint"] == hashlib.sha256(file.read_bytes()).hexdigest()
    assert_round_trip(tmp_path / "out", records, 0.2)
    prepare_corpus(jsonl, tmp_path / "again", tokenizer="bpe:300", seq_len=32, val_fraction=0.2, progress=False)
    assert tree_bytes(tmp_path / "out") == tree_bytes(tmp_path / "again")  # training is deterministic


def test_local_hf_tokenizer_dir(tmp_path, jsonl, records):
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    prepare_corpus(jsonl, tmp_path / "bpe", tokenizer="bpe:300", seq_len=32, val_fraction=0.2, progress=False)
    backend = Tokenizer.from_file(str(tmp_path / "bpe" / "tokenizer" / "tokenizer.json"))
    hf_dir = tmp_path / "hf_tok"
    PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=BPE_EOS).save_pretrained(str(hf_dir))
    manifest = prepare_corpus(
        jsonl, tmp_path / "out", tokenizer=str(hf_dir), seq_len=32, val_fraction=0.2, progress=False
    )
    assert manifest.tokenizer["kind"] == "hf" and manifest.tokenizer["path"] == str(hf_dir.resolve())
    assert manifest.tokenizer["fingerprint"] == hashlib.sha256((hf_dir / "tokenizer.json").read_bytes()).hexdigest()
    assert manifest.eos_id == backend.token_to_id(BPE_EOS) and manifest.vocab_size == 300
    assert_round_trip(tmp_path / "out", records, 0.2)

    no_eos = tmp_path / "no_eos"
    PreTrainedTokenizerFast(tokenizer_object=backend).save_pretrained(str(no_eos))
    with pytest.raises(MixweightError, match=r"no eos token") as err:
        prepare_corpus(jsonl, tmp_path / "x", tokenizer=str(no_eos), seq_len=32, progress=False)
    assert str(no_eos) in str(err.value)


def test_rerun_is_noop_and_existing_corpus_is_refused(tmp_path, jsonl):
    out = tmp_path / "out"
    prepare_corpus(jsonl, out, seq_len=32, val_fraction=0.1, progress=False)
    stamp = (out / "manifest.json").stat().st_mtime_ns
    prepare_corpus(jsonl, out, seq_len=32, val_fraction=0.1, progress=False)
    assert (out / "manifest.json").stat().st_mtime_ns == stamp
    with pytest.raises(MixweightError, match="overwrite"):
        prepare_corpus(jsonl, out, seq_len=16, val_fraction=0.1, progress=False)
    assert prepare_corpus(jsonl, out, seq_len=16, val_fraction=0.1, overwrite=True, progress=False).seq_len == 16
    assert not list(tmp_path.glob(".out.partial-*"))


def test_empty_documents_are_counted(tmp_path, records):
    extra = [
        {"text": "", "meta": {"redpajama_set_name": "RedPajamaBook"}},
        {"text": "  \n\t", "meta": {"redpajama_set_name": "RedPajamaBook"}},
        {"text": None, "meta": {"redpajama_set_name": "RedPajamaGithub"}},
    ]
    path = write_jsonl(tmp_path / "in.jsonl", records[:5] + extra + records[5:])
    manifest = prepare_corpus(path, tmp_path / "out", seq_len=32, val_fraction=0.2, progress=False)
    assert manifest.skipped["RedPajamaBook"]["empty_documents"] == 2
    assert manifest.skipped["RedPajamaGithub"]["empty_documents"] == 1
    assert manifest.skipped["RedPajamaWikipedia"]["empty_documents"] == 0
    assert_round_trip(tmp_path / "out", records, 0.2)


# --- bad input ----------------------------------------------------------------------------------
def bad(tmp_path, lines: list[str], name="bad.jsonl", **kwargs) -> str:
    path = tmp_path / name
    path.write_bytes(b"".join((line if isinstance(line, bytes) else line.encode()) + b"\n" for line in lines))
    kwargs = {"seq_len": 4, "val_fraction": 0.5, "progress": False, **kwargs}
    with pytest.raises(MixweightError) as err:
        prepare_corpus(path, tmp_path / "out", **kwargs)
    return str(err.value)


GOOD = json.dumps({"text": "hello world", "meta": {"redpajama_set_name": "a"}})


def test_missing_domain_field_names_field_file_line_and_keys(tmp_path):
    msg = bad(tmp_path, [GOOD, json.dumps({"text": "x", "meta": {"source": "web"}})])
    assert (
        "meta.redpajama_set_name" in msg and "bad.jsonl line 2" in msg and "'source'" in msg and "--domain-field" in msg
    )
    msg = bad(tmp_path, [json.dumps({"text": "x", "url": "u"})])
    assert "line 1" in msg and "'text'" in msg and "'url'" in msg


def test_missing_text_field(tmp_path):
    msg = bad(tmp_path, [GOOD, GOOD, json.dumps({"content": "x", "meta": {"redpajama_set_name": "a"}})])
    assert "'text'" in msg and "bad.jsonl line 3" in msg and "'content'" in msg and "--text-field" in msg
    msg = bad(tmp_path, [json.dumps({"text": 5, "meta": {"redpajama_set_name": "a"}})])
    assert "line 1" in msg and "int" in msg


def test_missing_field_in_parquet_names_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pylist([{"body": "x", "domain": "a"}] * 3), path)
    with pytest.raises(MixweightError, match=r"in\.parquet row 0.*'text'.*\['body', 'domain'\]"):
        prepare_corpus(path, tmp_path / "out", domain_field="domain", seq_len=4, progress=False)


def test_undecodable_lines(tmp_path):
    msg = bad(tmp_path, [GOOD, GOOD, b'{"text": "caf\xe9", "meta": {"redpajama_set_name": "a"}}'])
    assert "bad.jsonl line 3" in msg and "UTF-8" in msg
    msg = bad(tmp_path, [GOOD, '{"text": "oops"'])
    assert "bad.jsonl line 2" in msg and "JSON" in msg
    msg = bad(tmp_path, ["[1, 2]"])
    assert "line 1" in msg and "object" in msg


def test_domain_too_small(tmp_path, records):
    lines = [json.dumps(r) for r in records] + [json.dumps({"text": "tiny", "meta": {"redpajama_set_name": "Tiny"}})]
    msg = bad(tmp_path, lines, seq_len=32)
    assert "'Tiny' has 5 tokens in 1 document(s)" in msg and "one training block and one validation block" in msg
    assert "at least 64 tokens" in msg and "--seq-len" in msg and "more data" in msg
    assert "RedPajama" not in msg  # only the small domain is named
    # One document per domain cannot give both a training and a validation block, whatever its length.
    msg = bad(tmp_path, [json.dumps(r) for r in records[:3]], seq_len=8, val_fraction=0.01)
    assert "in 1 document(s)" in msg and "left for training" in msg


def test_bad_domain_name(tmp_path):
    msg = bad(tmp_path, [json.dumps({"text": "x", "meta": {"redpajama_set_name": "../etc"}})])
    assert "'../etc'" in msg and "line 1" in msg


def test_bad_paths_and_options(tmp_path, jsonl):
    with pytest.raises(MixweightError, match=r"nope\.jsonl.*no such file.*\.parquet"):
        prepare_corpus(tmp_path / "nope.jsonl", tmp_path / "out")
    csv = tmp_path / "data.csv"
    csv.write_text("a,b\n")
    with pytest.raises(MixweightError, match=r"data\.csv: unsupported file type.*\.jsonl.*\.parquet.*save_to_disk"):
        prepare_corpus(csv, tmp_path / "out")
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(MixweightError, match=r"empty_dir.*no readable files"):
        prepare_corpus(empty, tmp_path / "out")
    for spec in ["bytes", "bpe:abc", "bpe:100", str(tmp_path / "missing_tokenizer")]:
        with pytest.raises(MixweightError, match=r"'byte'.*'bpe:VOCAB'.*PATH"):
            prepare_corpus(jsonl, tmp_path / "out", tokenizer=spec)
    with pytest.raises(MixweightError, match="seq-len"):
        prepare_corpus(jsonl, tmp_path / "out", seq_len=1)
    for fraction in (1.0, -0.1):
        with pytest.raises(MixweightError, match="val-fraction"):
            prepare_corpus(jsonl, tmp_path / "out", val_fraction=fraction)
    assert not (tmp_path / "out").exists()


def test_config_hash_names_the_input_path(tmp_path, jsonl):
    import shutil

    from mixweight.data.prepare import prepare_config_hash

    twin = tmp_path / "twin"
    twin.mkdir()
    shutil.copy2(jsonl, twin / jsonl.name)  # same name, size and mtime: only the path differs
    args = ("meta.redpajama_set_name", "text", "byte", None, 32, 0.1)
    assert prepare_config_hash(jsonl, *args) == prepare_config_hash(jsonl, *args)
    assert prepare_config_hash(jsonl, *args) != prepare_config_hash(twin / jsonl.name, *args)
