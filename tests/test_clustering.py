"""`data prepare --domains cluster:K`: clustered domains, the clustering artifact, --domains-from, hostile input.

The fixture corpus mixes four clearly different kinds of text (Python code, English prose, tables of
numbers, HTML markup), each record carrying its kind in a field the clustering never reads.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from sklearn.metrics import adjusted_rand_score  # the `cluster` extra, also in `dev`

from mixweight.data.cluster_names import adjusted_rand_index
from mixweight.data.cluster_options import ARRAYS_FILE, CLUSTERING_FILE, DOMAINS_DIR
from mixweight.data.clustering import Clustering, draw_sample
from mixweight.data.manifest import Manifest, load_manifest
from mixweight.data.prepare import prepare_corpus
from mixweight.errors import MixweightError

KINDS = ("code", "prose", "numbers", "markup")
PREPARE = {"seq_len": 64, "val_fraction": 0.1, "progress": False}


def make_records(per_kind: int, seed: int = 0) -> list[dict]:
    """Records of four kinds, interleaved; `kind` is the label the clustering must find without reading it."""
    rng = random.Random(seed)
    ident = "alpha beta gamma delta value total count index result item node data buffer".split()
    words = "the river morning walked slowly towards village where old woman told stories about children".split()
    tags = "div span table body head title section article header footer".split()

    def code():
        forms = [
            "def {f}_{a}(self, {a}):\n    return self.{f} + {a}",
            "import {f}\nfrom {a} import {f}",
            "for {a} in range(len({f})):\n    {f}[{a}] = None",
            "class {F}({A}):\n    pass",
        ]
        lines = []
        for _ in range(rng.randint(3, 8)):
            f, a = rng.choice(ident), rng.choice(ident)
            lines.append(rng.choice(forms).format(f=f, a=a, F=f.title(), A=a.title()))
        return "\n".join(lines)

    def prose():
        return " ".join(rng.choice(words) for _ in range(rng.randint(40, 90))).capitalize() + "."

    def numbers():
        rows = rng.randint(3, 8)
        return "\n".join(", ".join(f"{rng.uniform(-1000, 1000):.3f}" for _ in range(6)) for _ in range(rows))

    def markup():
        items = [(rng.choice(tags), rng.choice(tags)) for _ in range(rng.randint(4, 10))]
        return "<html>" + "\n".join(f'<{t} class="{c}"><a href="/{c}.html">{c}</a></{t}>' for t, c in items) + "</html>"

    makers = {"code": code, "prose": prose, "numbers": numbers, "markup": markup}
    return [{"text": makers[kind](), "kind": kind} for _ in range(per_kind) for kind in KINDS]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def assignments(corpus: Path, records: list[dict]) -> np.ndarray:
    """Each record's cluster by the corpus's own artifact, reloaded from disk."""
    return Clustering.load(corpus / DOMAINS_DIR).assign([r["text"] for r in records])


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """(input JSONL, its records, a corpus clustered into 4 domains with --compare-field kind)."""
    root = tmp_path_factory.mktemp("clustered")
    records = make_records(40)
    raw = write_jsonl(root / "mixed.jsonl", records)
    corpus = root / "corpus"
    prepare_corpus(raw, corpus, domains="cluster:4", compare_field="kind", **PREPARE)
    return raw, records, corpus


def test_four_kinds_of_text_are_found_again(mixed):
    raw, records, corpus = mixed
    manifest = load_manifest(corpus)
    block = manifest.clustering
    assert block["compare"]["ari"] >= 0.8
    # the recorded ARI is the one of every document's cluster by the artifact reloaded from disk
    labels = assignments(corpus, records)
    kinds = [r["kind"] for r in records]
    assert block["compare"]["ari"] == pytest.approx(adjusted_rand_score(kinds, labels), abs=1e-6)
    names = json.loads((corpus / DOMAINS_DIR / CLUSTERING_FILE).read_text())
    assert manifest.domains == [c["name"] for c in names["clusters"]] == list(block["clusters"])
    counts = np.bincount(labels, minlength=4)
    assert [block["clusters"][d]["documents"] for d in manifest.domains] == counts.tolist()
    assert sum(c["share"] for c in block["clusters"].values()) == pytest.approx(1.0, abs=1e-5)
    for domain in manifest.domains:  # the streams hold exactly the documents the clustering gave the domain
        held = sum(manifest.splits[split][domain].documents for split in ("train", "val"))
        assert held == block["clusters"][domain]["documents"]
    # readable: the code cluster is named after code words, the markup cluster after tags
    by_kind = {kinds[i]: manifest.domains[labels[i]] for i in range(len(kinds))}
    assert {"def", "self", "import", "return"} & set(by_kind["code"].split("-")[1:])
    assert {"html", "href", "class", "div", "span"} & set(by_kind["markup"].split("-")[1:])
    assert all("top terms:" in c["description"] for c in block["clusters"].values())
    raw_manifest = json.loads((corpus / "manifest.json").read_text())
    assert raw_manifest["source"]["domain_field"] is None and raw_manifest["clustering"]["path"] == DOMAINS_DIR


def test_the_artifact_is_json_and_safetensors_and_its_hash_is_in_the_manifest(mixed):
    import hashlib

    _, _, corpus = mixed
    files = sorted(p.name for p in (corpus / DOMAINS_DIR).iterdir())
    assert files == sorted([ARRAYS_FILE, CLUSTERING_FILE])
    record = json.loads((corpus / DOMAINS_DIR / CLUSTERING_FILE).read_text())
    arrays = (corpus / DOMAINS_DIR / ARRAYS_FILE).read_bytes()
    assert record["arrays"]["sha256"] == hashlib.sha256(arrays).hexdigest()
    assert set(record["arrays"]["names"]) == {"centroids", "tfidf.columns", "tfidf.idf", "tfidf.components"}
    assert record["embedding"]["kind"] == "tfidf" and record["backend"] == "sklearn"
    assert record["sample"]["documents"] == 160 and len(record["sample"]["fingerprint"]) == 16
    sha = hashlib.sha256((corpus / DOMAINS_DIR / CLUSTERING_FILE).read_bytes()).hexdigest()
    assert load_manifest(corpus).clustering["sha256"] == sha


def test_same_seed_gives_a_byte_identical_corpus_and_another_seed_another_hash(mixed, tmp_path):
    raw, _, corpus = mixed
    again = prepare_corpus(raw, tmp_path / "again", domains="cluster:4", compare_field="kind", **PREPARE)
    assert tree_bytes(tmp_path / "again") == tree_bytes(corpus)
    other = prepare_corpus(
        raw, tmp_path / "seed1", domains="cluster:4", compare_field="kind", cluster_seed=1, **PREPARE
    )
    assert other.config_hash != again.config_hash
    record = json.loads((tmp_path / "seed1" / DOMAINS_DIR / CLUSTERING_FILE).read_text())
    assert record["seed"] == 1 and other.clustering["compare"]["ari"] >= 0.8


def test_ari_from_a_contingency_table_equals_scikit_learns():
    rng = np.random.default_rng(0)
    cases = [
        (rng.integers(0, 4, 500), rng.integers(0, 6, 500)),
        (np.repeat(np.arange(3), 50), np.repeat(np.arange(3), 50)),  # identical partitions
        (np.zeros(20, int), np.zeros(20, int)),  # one label, one cluster
        (np.arange(30), np.arange(30) % 3),
    ]
    for truth, found in cases:
        table: dict = {}
        for t, f in zip(truth, found):
            table.setdefault(str(t), {}).setdefault(str(f), 0)
            table[str(t)][str(f)] += 1
        expected = adjusted_rand_score(truth, found)
        assert adjusted_rand_index(table) == pytest.approx(expected, abs=1e-12)


def test_domains_from_assigns_a_new_corpus_to_the_same_clusters(mixed, tmp_path):
    _, _, source = mixed
    records = make_records(30, seed=7)  # other documents of the same four kinds
    raw = write_jsonl(tmp_path / "next.jsonl", records)
    manifest = prepare_corpus(raw, tmp_path / "next", domains_from=str(source), compare_field="kind", **PREPARE)
    assert manifest.domains == load_manifest(source).domains
    assert tree_bytes(tmp_path / "next" / DOMAINS_DIR) == tree_bytes(source / DOMAINS_DIR)
    assert manifest.clustering["from"] == str(source.resolve())
    assert manifest.clustering["sha256"] == load_manifest(source).clustering["sha256"]
    assert manifest.clustering["compare"]["ari"] >= 0.8
    # the clustering is part of the config hash: the same options on another clustering are another corpus
    copy = tmp_path / "copy"
    shutil.copytree(source, copy)
    record = json.loads((copy / DOMAINS_DIR / CLUSTERING_FILE).read_text())
    record["clusters"][0]["description"] = "edited"
    (copy / DOMAINS_DIR / CLUSTERING_FILE).write_text(json.dumps(record))
    edited = prepare_corpus(raw, tmp_path / "next2", domains_from=str(copy), compare_field="kind", **PREPARE)
    assert edited.config_hash != manifest.config_hash
    # a damaged artifact is refused with one line naming the file
    (copy / DOMAINS_DIR / ARRAYS_FILE).write_bytes(b"not safetensors")
    with pytest.raises(MixweightError, match=r"arrays\.safetensors: missing or not the file .* records"):
        prepare_corpus(raw, tmp_path / "next3", domains_from=str(copy), **PREPARE)
    assert not (tmp_path / "next3").exists()


def test_a_corpus_larger_than_the_sample_is_assigned_whole(tmp_path):
    records = make_records(100, seed=3)
    raw = write_jsonl(tmp_path / "big.jsonl", records)
    manifest = prepare_corpus(
        raw, tmp_path / "big", domains="cluster:4", cluster_sample=40, compare_field="kind", **PREPARE
    )
    record = json.loads((tmp_path / "big" / DOMAINS_DIR / CLUSTERING_FILE).read_text())
    assert record["sample"]["documents"] == 40 and record["sample"]["seen"] == 400
    assert sum(c["documents"] for c in manifest.clustering["clusters"].values()) == 400
    assert manifest.clustering["compare"]["ari"] >= 0.8


def test_the_sample_depends_on_the_texts_and_seed_not_their_order():
    texts = [r["text"] for r in make_records(50)]
    sample, record = draw_sample(iter(texts), 30, seed=0)
    shuffled = list(texts)
    random.Random(1).shuffle(shuffled)
    assert draw_sample(iter(shuffled), 30, seed=0) == (sample, record)
    assert draw_sample(iter(texts), 30, seed=1)[1]["fingerprint"] != record["fingerprint"]
    assert len(sample) == 30 and record["seen"] == 200


def test_empty_texts_are_counted_and_in_no_domain(tmp_path):
    records = make_records(30)
    records[5:5] = [{"text": "", "kind": "code"}, {"text": "   \n", "kind": "prose"}, {"text": None, "kind": "code"}]
    manifest = prepare_corpus(
        write_jsonl(tmp_path / "e.jsonl", records), tmp_path / "e", domains="cluster:4", **PREPARE
    )
    assert manifest.clustering["empty_documents"] == 3
    assert sum(c["documents"] for c in manifest.clustering["clusters"].values()) == 120


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--domains", "cluster:1"], r"--domains cluster:1: K must be >= 2"),
        (["--domains", "kmeans:4"], r"--domains kmeans:4: expected cluster:K"),
        (["--domains", "cluster:50"], r"--domains cluster:50: only 12 non-empty document\(s\) to cluster"),
        (["--embed", "tfidf"], r"--embed applies only with --domains cluster:K or --domains-from"),
        (["--compare-field", "kind"], r"--compare-field applies only with"),
        (["--domains", "cluster:2", "--domains-from", "x"], r"--domains and --domains-from both given"),
        (["--domains", "cluster:2", "--cluster-sample", "1"], r"--cluster-sample 1: must be >= 2"),
        (["--domains", "cluster:2", "--cluster-backend", "gpu"], r"--cluster-backend 'gpu': expected one of"),
        (["--domains", "cluster:2", "--compare-field", "nope"], r"no field 'nope' .* set --compare-field"),
        (["--domains", "cluster:2", "--embed", "{tmp}/missing"], r"--embed .*missing: not a Hugging Face model dir"),
        (["--domains", "cluster:2", "--embed", "{tmp}/noconfig"], r"noconfig: not a Hugging Face model directory"),
        (["--domains", "cluster:2", "--embed", "{tmp}/noweights"], r"noweights: cannot load an encoder"),
        (["--domains", "cluster:2", "--embed", "{tmp}/custom"], r"has 'auto_map'"),
        (["--domains-from", "{tmp}"], r"--domains-from .*: no domains/clustering\.json there"),
    ],
)
def test_hostile_options_are_one_line_and_write_nothing(tmp_path, cli_refuses, flags, message):
    raw = write_jsonl(tmp_path / "small.jsonl", make_records(3))
    (tmp_path / "noconfig").mkdir()
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (tmp_path / "custom").mkdir()
    (tmp_path / "custom" / "config.json").write_text(json.dumps({"model_type": "x", "auto_map": {"AutoModel": "m.M"}}))
    out = tmp_path / "out"
    argv = ["data", "prepare", "--input", raw, "--out", out, "--seq-len", "16"]
    line = cli_refuses(argv + [f.format(tmp=tmp_path) for f in flags])
    assert __import__("re").search(message, line), line
    assert not out.exists()


def test_domains_from_refuses_options_of_a_new_clustering(mixed, tmp_path, cli_refuses):
    raw, _, source = mixed
    line = cli_refuses(
        ["data", "prepare", "--input", raw, "--out", tmp_path / "o", "--domains-from", source, "--cluster-seed", "2"]
    )
    assert "--cluster-seed with --domains-from" in line


def test_cli_prints_clusters_sizes_and_the_contingency_table(mixed, tmp_path, capsys):
    from mixweight.cli import main

    raw, _, _ = mixed
    main(
        ["data", "prepare", "--input", str(raw), "--out", str(tmp_path / "c"), "--domains", "cluster:4"]
        + ["--compare-field", "kind", "--seq-len", "64", "--val-fraction", "0.1"]
    )
    captured = capsys.readouterr()
    manifest = load_manifest(tmp_path / "c")
    for name, info in manifest.clustering["clusters"].items():
        assert f"  {name}: {info['documents']} documents (" in captured.out
    assert "adjusted Rand index" in captured.out and all(f"  {kind} " in captured.out for kind in KINDS)
    assert "documents/s per core" in captured.err
    main(
        ["data", "prepare", "--input", str(raw), "--out", str(tmp_path / "d"), "--domains-from", str(tmp_path / "c")]
        + ["--seq-len", "64", "--val-fraction", "0.1"]
    )
    assert load_manifest(tmp_path / "d").domains == manifest.domains
    assert f"from {(tmp_path / 'c').resolve()}" in capsys.readouterr().out


def test_a_labelled_corpus_manifest_has_no_clustering_and_old_manifests_load(tmp_path):
    records = [{"text": r["text"], "meta": {"redpajama_set_name": r["kind"]}} for r in make_records(30)]
    manifest = prepare_corpus(write_jsonl(tmp_path / "l.jsonl", records), tmp_path / "l", **PREPARE)
    raw = json.loads((tmp_path / "l" / "manifest.json").read_text())
    assert "clustering" not in raw and manifest.clustering == {}
    assert Manifest.from_json({**raw, "clustering": {"k": 2}}).clustering == {"k": 2}


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory) -> Path:
    """A tiny randomly initialised BERT and a WordPiece tokenizer trained here: no download."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    path = tmp_path_factory.mktemp("encoder")
    backend = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordPieceTrainer(vocab_size=300, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"])
    backend.train_from_iterator([r["text"] for r in make_records(20, seed=11)], trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]")
    tokenizer.save_pretrained(path)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=backend.get_vocab_size(),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(path)
    return path


def test_an_encoder_directory_embeds_and_its_clustering_is_reused_by_fingerprint(mixed, encoder_dir, tmp_path):
    raw, _, _ = mixed
    first = prepare_corpus(raw, tmp_path / "e1", domains="cluster:4", embed=str(encoder_dir), **PREPARE)
    prepare_corpus(raw, tmp_path / "e2", domains="cluster:4", embed=str(encoder_dir), **PREPARE)
    assert tree_bytes(tmp_path / "e1") == tree_bytes(tmp_path / "e2")
    record = json.loads((tmp_path / "e1" / DOMAINS_DIR / CLUSTERING_FILE).read_text())
    assert record["embedding"]["kind"] == "encoder" and record["embedding"]["path"] == str(encoder_dir.resolve())
    assert record["arrays"]["names"] == ["centroids"]
    assert all("nearest documents:" in c["description"] for c in first.clustering["clusters"].values())
    # the encoder moved: --domains-from finds it with --embed, and refuses another encoder
    moved = tmp_path / "moved-encoder"
    shutil.copytree(encoder_dir, moved)
    again = prepare_corpus(raw, tmp_path / "e3", domains_from=str(tmp_path / "e1"), embed=str(moved), **PREPARE)
    assert again.domains == first.domains
    assert tree_bytes(tmp_path / "e3" / "train") == tree_bytes(tmp_path / "e1" / "train")
    config = json.loads((moved / "config.json").read_text())
    (moved / "config.json").write_text(json.dumps({**config, "layer_norm_eps": 1e-6}))  # another encoder, still loads
    with pytest.raises(MixweightError, match=r"is not the one the clustering was fitted with"):
        prepare_corpus(raw, tmp_path / "e4", domains_from=str(tmp_path / "e1"), embed=str(moved), **PREPARE)


def test_faiss_backend_is_deterministic_where_installed(mixed, tmp_path):
    pytest.importorskip("faiss")  # optional: not in any extra
    raw, _, _ = mixed
    one = prepare_corpus(
        raw, tmp_path / "f1", domains="cluster:4", cluster_backend="faiss", compare_field="kind", **PREPARE
    )
    prepare_corpus(raw, tmp_path / "f2", domains="cluster:4", cluster_backend="faiss", compare_field="kind", **PREPARE)
    assert tree_bytes(tmp_path / "f1") == tree_bytes(tmp_path / "f2")
    assert one.clustering["compare"]["ari"] >= 0.8
    assert json.loads((tmp_path / "f1" / DOMAINS_DIR / CLUSTERING_FILE).read_text())["backend"] == "faiss"


def test_the_pipeline_clusters_and_its_report_names_the_clusters(tmp_path, tiny_spec):
    from mixweight.pipeline import load_pipeline_config, run_pipeline

    records = [r for r in make_records(60) if r["kind"] in ("code", "prose")]
    raw = write_jsonl(tmp_path / "raw.jsonl", records)
    config = {
        "data": {
            "prepare": {
                "input": str(raw),
                "seq_len": 32,
                "val_fraction": 0.2,
                "domains": "cluster:2",
                "compare_field": "kind",
                "cluster_sample": 100,
            }
        },
        "train": {
            "model": tiny_spec,
            "steps": 2,
            "batch_size": 4,
            "lr": 3e-3,
            "warmup_steps": 1,
            "eval_every": 0,
            "eval_blocks": 2,
            "checkpoint_every": 100,
            "progress": False,
        },
        "doremi": None,
        "doge": None,
        "arms": {"uniform": {"domain_weights": "uniform"}},
        "seeds": [0],
        "progress": False,
    }
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    report = run_pipeline(load_pipeline_config(tmp_path / "p.yaml"), out)
    manifest = load_manifest(out / "corpus" / "data")
    assert manifest.clustering["compare"]["ari"] >= 0.8
    assert set(report["arms"]["uniform"]["final"]["domains"]) == set(manifest.domains)
    markdown = (out / "report" / "report.md").read_text()
    assert "## Domains: clusters of the corpus" in markdown
    for name, info in manifest.clustering["clusters"].items():
        assert f"| `{name}` | {info['documents']} |" in markdown
    assert report["corpus"]["clusters"] == manifest.clustering["clusters"]


def test_the_pipeline_refuses_a_bad_clustering_key_when_read(tmp_path):
    from mixweight.pipeline import load_pipeline_config

    (tmp_path / "p.yaml").write_text(yaml.safe_dump({"data": {"prepare": {"input": "x", "domains": "cluster:1"}}}))
    with pytest.raises(MixweightError, match=r"pipeline 'data.prepare': --domains cluster:1: K must be >= 2"):
        load_pipeline_config(tmp_path / "p.yaml")


def _damaged(source: Path, tmp_path: Path, record_edit=None, arrays_edit=None) -> Path:
    """A copy of `source`'s clustering with its record and/or arrays edited (the record's sha256 follows the arrays,
    so the edit reaches the checks after the hash)."""
    import hashlib

    from safetensors.numpy import load_file, save_file

    directory = tmp_path / "damaged"
    shutil.copytree(source / DOMAINS_DIR, directory)
    record = json.loads((directory / CLUSTERING_FILE).read_text())
    if arrays_edit is not None:
        arrays = load_file(str(directory / ARRAYS_FILE))
        result = arrays_edit(arrays, directory / ARRAYS_FILE)
        if result is not None:
            save_file(result, str(directory / ARRAYS_FILE))
        record["arrays"]["sha256"] = hashlib.sha256((directory / ARRAYS_FILE).read_bytes()).hexdigest()
    if record_edit is not None:
        record_edit(record)
    (directory / CLUSTERING_FILE).write_text(json.dumps(record))
    return directory


def _raw(path: Path, text: bytes) -> None:
    path.write_bytes(text)


DAMAGED_CLUSTERINGS = {
    "unreadable record": (None, None, r"clustering\.json: not readable JSON"),
    "another format": (lambda r: r.update(format="other"), None, r"not a mixweight clustering"),
    "K and clusters disagree": (lambda r: r.update(k=5), None, r"'k' and 'clusters' \(K entries"),
    "a bad cluster name": (lambda r: r["clusters"][0].update(name="a/b"), None, r"cluster name 'a/b'"),
    "arrays not safetensors": (None, lambda a, p: _raw(p, b"not safetensors"), r"not a readable safetensors file"),
    "centroids of another K": (None, lambda a, p: {**a, "centroids": a["centroids"][:3]}, r"'centroids' must be K=4"),
    "a NaN centroid": (
        None,
        lambda a, p: {
            **a,
            "centroids": np.where(
                np.arange(a["centroids"].size).reshape(a["centroids"].shape) == 0, np.nan, a["centroids"]
            ).astype(a["centroids"].dtype),
        },
        r"'centroids' must be K=4 finite rows",
    ),  # fmt: skip
    "TF-IDF arrays that do not fit": (
        None,
        lambda a, p: {**a, "tfidf.idf": a["tfidf.idf"][:-1]},
        r"the tfidf arrays do not fit together",
    ),
    "a TF-IDF array missing": (
        None,
        lambda a, p: {k: v for k, v in a.items() if k != "tfidf.components"},
        r"array 'tfidf.components' is missing",
    ),
}


@pytest.mark.parametrize("case", sorted(DAMAGED_CLUSTERINGS))
def test_a_damaged_clustering_is_one_line_naming_the_file(mixed, tmp_path, case):
    record_edit, arrays_edit, message = DAMAGED_CLUSTERINGS[case]
    _, _, source = mixed
    directory = _damaged(source, tmp_path, record_edit, arrays_edit)
    if case == "unreadable record":
        (directory / CLUSTERING_FILE).write_bytes(b"\xff{ not json")
    with pytest.raises(MixweightError, match=message) as refused:
        Clustering.load(directory)
    assert str(directory) in str(refused.value) and "\n" not in str(refused.value)
