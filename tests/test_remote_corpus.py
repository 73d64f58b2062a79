"""Corpora on object storage, offline.

A "remote" is another local directory read through the remote code path (`file:///DIR`, the way
mosaicml-streaming tests itself), and the S3 code path runs against moto's S3 server started here
on 127.0.0.1 (the optional `test-s3` extra; skipped with the reason when moto is absent).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mixweight.cli import main
from mixweight.data.remote import CACHE_DIR_ENV, MARKER
from mixweight.errors import MixweightError
from mixweight.train import loop
from mixweight.train.checkpoint import list_checkpoints

REPO = Path(__file__).resolve().parents[1]
SYNTH = ["--tokens-per-domain", "8192", "--seq-len", "64"]  # the bytes of conftest's synth_corpus


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    """Every test caches remote corpora in its own directory."""
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def remote(tmp_path_factory) -> str:
    """conftest's synthetic corpus, uploaded by `data synth --out file:///...`."""
    root = tmp_path_factory.mktemp("bucket") / "corpus"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_DIR_ENV, str(root.parent / "upload-cache"))
        main(["data", "synth", "--out", f"file://{root}", *SYNTH])
    return f"file://{root}"


@pytest.fixture(scope="session")
def make_config(train_config):
    """This file's validated TrainConfig; any default can be overridden."""
    return functools.partial(
        train_config,
        steps=4,
        batch_size=4,
        lr=3e-3,
        final_lr=3e-4,
        warmup_steps=1,
        eval_every=2,
        eval_blocks=4,
        checkpoint_every=2,
        log_every=1,
        progress=False,
    )


def _metrics(run_dir: Path) -> list[dict]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for record in records:
        record.pop("time", None)
    return records


# --- writing ---------------------------------------------------------------------------------------
def test_upload_holds_the_same_bytes_as_a_local_corpus(remote, synth_corpus, cache):
    assert _files(Path(remote[len("file://") :])) == _files(Path(synth_corpus))
    assert not cache.exists() or not any(cache.iterdir())  # this test's cache: nothing staged was left


def test_upload_puts_the_manifest_last_and_a_cut_upload_is_not_a_corpus(tmp_path, cli_refuses, monkeypatch):
    from streaming.base.storage.upload import LocalUploader

    order, real = [], LocalUploader.upload_file

    def upload_file(self, filename):
        if self.remote is None:  # MDSWriter's own local writes go through it too
            return real(self, filename)
        order.append(filename)
        if len(order) == 5 and "cut" in str(self.remote):
            raise OSError(28, "No space left on device")
        return real(self, filename)

    monkeypatch.setattr(LocalUploader, "upload_file", upload_file)
    main(["data", "synth", "--out", f"file://{tmp_path}/whole", *SYNTH])
    assert order[-1] == "manifest.json" and order.count("manifest.json") == 1 and len(order) == 29

    order.clear()
    line = cli_refuses(["data", "synth", "--out", f"file://{tmp_path}/cut", *SYNTH])
    assert f"file://{tmp_path}/cut/" in line and "cannot upload" in line and "No space left" in line
    assert (tmp_path / "cut").is_dir() and not (tmp_path / "cut" / "manifest.json").exists()
    line = cli_refuses(["train", "--data", f"file://{tmp_path}/cut", "--out", str(tmp_path / "run")])
    assert f"file://{tmp_path}/cut/manifest.json" in line and "is not there" in line
    assert not (tmp_path / "run").exists()


def test_a_different_corpus_at_the_url_is_never_replaced(remote, cli_refuses):
    before = _files(Path(remote[len("file://") :]))
    main(["data", "synth", "--out", remote, *SYNTH])  # the same corpus: a no-op
    line = cli_refuses(["data", "synth", "--out", remote, *SYNTH, "--seed", "1", "--overwrite"])
    assert remote in line and "different corpus" in line
    assert _files(Path(remote[len("file://") :])) == before


def test_unsupported_scheme_is_one_line(cli_refuses, tmp_path):
    line = cli_refuses(["train", "--data", "http://example.com/corpus", "--out", str(tmp_path / "r")])
    assert "http://example.com/corpus" in line and "'http://'" in line and "s3://" in line
    line = cli_refuses(["train", "--data", "file://corpus", "--out", str(tmp_path / "r")])
    assert "file://corpus" in line and "absolute path" in line
    assert not (tmp_path / "r").exists()


# --- reading ---------------------------------------------------------------------------------------
def test_train_resume_and_eval_from_a_url_match_the_local_corpus(
    remote, synth_corpus, tiny_spec, tmp_path, cache, crash_at_step, capsys, make_config
):
    local, resumed = tmp_path / "local", tmp_path / "remote"
    loop.train(make_config(synth_corpus, tiny_spec, local))

    with crash_at_step(3), pytest.raises(KeyboardInterrupt):
        loop.train(make_config(remote, tiny_spec, resumed))
    assert [s for s, _ in list_checkpoints(resumed)] == [2]
    loop.train(make_config(remote, tiny_spec, resumed, resume=True))

    a = load_file(str(local / "checkpoints" / "step-4" / "model" / "model.safetensors"))
    b = load_file(str(resumed / "checkpoints" / "step-4" / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _metrics(local) == _metrics(resumed)

    # The cache copy: the marker, and training shards that streaming fetched from the remote.
    (copy,) = [p.parent for p in cache.rglob(MARKER)]
    assert json.loads((copy / MARKER).read_text())["url"] == remote
    assert list(copy.glob("train/*/shard.*.mds")) and list(copy.glob("val/*/shard.*.mds"))

    main(["eval", str(resumed)])  # the run's own data: the URL
    main(["eval", str(resumed), "--data", synth_corpus])
    capsys.readouterr()
    evals = sorted((resumed / "eval").glob("*.json"))
    assert evals
    from mixweight.data.corpus import open_corpus
    from mixweight.train.validation import load_validation

    url, local = open_corpus(remote), open_corpus(synth_corpus)
    via_url = load_validation(url.directory, url.manifest, 8)
    via_dir = load_validation(local.directory, local.manifest, 8)
    assert via_url.keys() == via_dir.keys() and all(torch.equal(via_url[d], via_dir[d]) for d in via_dir)


def test_encodings_are_checked_before_any_shard_is_fetched(synth_corpus, tmp_path, cache, cli_refuses):
    bad = tmp_path / "bad"
    shutil.copytree(synth_corpus, bad)
    index_path = bad / "val" / "noise" / "index.json"
    index = json.loads(index_path.read_text())
    for shard in index["shards"]:
        shard["column_encodings"] = [
            "pkl" if n == "tokens" else e for n, e in zip(shard["column_names"], shard["column_encodings"])
        ]
    index_path.write_text(json.dumps(index))
    line = cli_refuses(["train", "--data", f"file://{bad}", "--out", str(tmp_path / "run")])
    assert "'pkl'" in line and "could run code" in line and f"file://{bad}/val/noise" in line
    assert not list(cache.rglob("val/noise/shard.*")) and not list(cache.rglob("manifest.json"))


def test_a_corpus_written_again_at_the_url_gets_a_fresh_cache_copy(tmp_path, cache):
    from mixweight.data.corpus import open_corpus

    url = f"file://{tmp_path}/corpus"
    main(["data", "synth", "--out", url, *SYNTH])
    first = open_corpus(url)
    shutil.rmtree(tmp_path / "corpus")
    main(["data", "synth", "--out", url, *SYNTH, "--seed", "1"])
    second = open_corpus(url)
    assert first.directory != second.directory and second.manifest.source["seed"] == 1


def test_two_processes_train_from_a_url(remote, tiny_spec, tmp_path, free_port):
    out, cache = tmp_path / "run", tmp_path / "torchrun-cache"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={free_port()}",
        "-m",
        "mixweight",
        "train",
        "--data",
        remote,
        "--out",
        str(out),
        "--model",
        tiny_spec,
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--eval-every",
        "0",
        "--eval-blocks",
        "4",
        "--log-every",
        "1",
        "--no-progress",
        "--cache-dir",
        str(cache),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop(CACHE_DIR_ENV)  # --cache-dir alone says where
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    steps = [json.loads(line).get("step") for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert 2 in steps
    assert list(cache.rglob("train/*/shard.*.mds")) and list(cache.rglob(MARKER))


# --- S3, against moto's server on 127.0.0.1 -----------------------------------------------------------
@pytest.fixture
def s3(tmp_path, monkeypatch, free_port):
    """A local S3-compatible endpoint with one bucket; yields (endpoint, bucket)."""
    server_module = pytest.importorskip(
        "moto.server", reason="moto is not installed: `pip install -e .[test-s3]` runs the S3 tests"
    )
    boto3 = pytest.importorskip("boto3", reason="boto3 is not installed: `pip install -e .[test-s3]`")
    port = free_port()
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    for key, value in {
        "S3_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bucket")
    try:
        yield endpoint, "bucket"
    finally:
        _require_auth(endpoint, "inf")
        server.stop()


def _require_auth(endpoint: str, after: str) -> None:
    """moto checks credentials against its IAM once `after` requests have passed ("0": from now on)."""
    request = urllib.request.Request(
        f"{endpoint}/moto-api/reset-auth", data=after.encode(), method="POST", headers={"Content-Type": "text/plain"}
    )  # not a form: moto reads the body
    urllib.request.urlopen(request).read()


def test_s3_upload_train_and_errors_name_the_url(s3, tiny_spec, tmp_path, capsys, cache, make_config, cli_refuses):
    endpoint, bucket = s3
    url = f"s3://{bucket}/corpus"
    main(["data", "synth", "--out", url, *SYNTH])
    capsys.readouterr()
    loop.train(make_config(url, tiny_spec, tmp_path / "run", steps=2, eval_every=0))
    assert (tmp_path / "run" / "checkpoints" / "step-2").is_dir()
    assert list(cache.rglob("train/*/shard.*.mds"))

    line = cli_refuses(["train", "--data", f"s3://{bucket}/absent", "--out", str(tmp_path / "r2")])
    assert f"s3://{bucket}/absent/manifest.json" in line and "is not there" in line

    _require_auth(endpoint, "0")  # the key "testing" is no IAM user of this server: every request is refused
    shutil.rmtree(cache)
    line = cli_refuses(["eval", str(tmp_path / "run")])
    assert f"{url}/manifest.json" in line and "credentials" in line
    line = cli_refuses(["data", "synth", "--out", f"s3://{bucket}/other", *SYNTH])
    assert f"s3://{bucket}/other/manifest.json" in line and "credentials" in line
    assert not (tmp_path / "r2").exists()


def test_s3_missing_bucket_is_one_line(s3, tmp_path, capsys):
    with pytest.raises(MixweightError, match="s3://no-such-bucket/corpus/manifest.json"):
        from mixweight.data.corpus import open_corpus

        open_corpus("s3://no-such-bucket/corpus")


def test_pipeline_path_form_takes_a_url_and_so_do_doremi_and_doge(remote, tiny_spec, tmp_path, cache):
    import yaml

    from mixweight.pipeline import load_pipeline_config, run_pipeline

    short = {"lr": 3e-3, "final_lr": 3e-4, "warmup_steps": 1, "batch_size": 4, "progress": False, "log_every": 1}
    config = {
        "data": {"path": remote},
        "train": {
            "model": tiny_spec,
            "steps": 2,
            "batch_size": 4,
            "warmup_steps": 1,
            "eval_every": 0,
            "eval_blocks": 4,
            "checkpoint_every": 100,
        },
        "doremi": {"proxy": tiny_spec, "steps": 2, "reference_steps": 2, **short},
        "doge": {"proxy": tiny_spec, "steps": 2, **short},
        "arms": {"doremi": {"domain_weights": "doremi"}, "doge": {"domain_weights": "doge"}},
        "seeds": [0],
        "progress": False,
    }
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    run_pipeline(load_pipeline_config(tmp_path / "pipeline.yaml"), out)
    for method in ("doremi", "doge"):
        weights = json.loads((out / "weights" / method / "domain_weights.json").read_text())
        assert len(weights["domains"]) == 7
        assert (out / "runs" / f"{method}-seed0" / "eval.json").is_file()
    assert len(list(cache.rglob(MARKER))) == 1  # one cache copy served every stage


def test_a_damaged_cache_copy_says_to_delete_it(remote, tmp_path, cache, cli_refuses):
    from mixweight.data.corpus import open_corpus

    copy = Path(open_corpus(remote).directory)
    next(copy.glob("val/noise/shard.*.mds")).write_bytes(b"truncated")
    line = cli_refuses(["train", "--data", remote, "--out", str(tmp_path / "run")])
    assert "truncated or corrupted" in line and remote in line and f"delete {copy} to fetch it again" in line


def test_cache_dir_defaults_and_the_flag(tmp_path, monkeypatch):
    from mixweight.data import remote as remote_module

    monkeypatch.delenv(CACHE_DIR_ENV)
    monkeypatch.setenv("MIXWEIGHT_CACHE", str(tmp_path / "mw"))
    assert remote_module.cache_dir() == tmp_path / "mw" / "remote"
    monkeypatch.delenv("MIXWEIGHT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if sys.platform.startswith("linux"):
        assert remote_module.cache_dir() == tmp_path / "xdg" / "mixweight" / "remote"
    remote_module.set_cache_dir(str(tmp_path / "flag"))  # what --cache-dir does, inherited by child processes
    assert remote_module.cache_dir() == tmp_path / "flag" and os.environ[CACHE_DIR_ENV] == str(tmp_path / "flag")
