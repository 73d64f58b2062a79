"""`mixweight doctor`: versions, device, extras, stale shared memory; text and JSON; removes nothing."""

import json
import os
import subprocess
import sys
from importlib import metadata

from streaming.base.shared.prefix import _pack_locals

from mixweight.doctor import collect, render


def test_doctor_names_the_versions_and_its_json_parses():
    done = subprocess.run([sys.executable, "-m", "mixweight", "doctor", "--json"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["mixweight"] == __import__("mixweight").__version__
    assert info["python"] == sys.version.split()[0]
    for name in ("torch", "transformers", "mosaicml-streaming"):
        assert info["packages"][name] == metadata.version(name)
    assert info["device"]["cpu_count"] == os.cpu_count() and isinstance(info["device"]["cuda_available"], bool)
    assert set(info["extras"]) >= {"eval", "tracking", "s3"}
    assert set(info["extras"]["tracking"]) == {"tensorboard", "wandb", "mlflow"}

    text = subprocess.run([sys.executable, "-m", "mixweight", "doctor"], capture_output=True, text=True)
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith(f"mixweight {info['mixweight']}\n")
    assert f"torch {metadata.version('torch')}" in text.stdout
    assert f"mosaicml-streaming {metadata.version('mosaicml-streaming')}" in text.stdout
    assert "device: " in text.stdout and "tracking: tensorboard" in text.stdout


def test_doctor_reports_stale_shared_memory_and_removes_nothing(tmp_path):
    shm = tmp_path / "shm"
    shm.mkdir()
    stream = str(tmp_path / "corpus" / "train" / "a")
    (shm / "000123_locals").write_bytes(_pack_locals([stream], 123))  # no live process maps these files
    (shm / "000123_barrier").write_bytes(b"\0" * 8)
    (shm / "000124_barrier").write_bytes(b"\0" * 8)  # a prefix with no locals: not attributable, still unmapped
    before = sorted(p.name for p in shm.iterdir())

    info = collect(shm)
    by_prefix = {p["prefix"]: p for p in info["shared_memory"]["prefixes"]}
    assert by_prefix["000123"] == {
        "prefix": "000123",
        "segments": 2,
        "streams": [stream],
        "ours": True,
        "in_use": False,
        "stale": True,
    }
    assert by_prefix["000124"]["streams"] == [] and by_prefix["000124"]["segments"] == 1
    text = render(info)
    assert "3 segment(s) in 2 prefix(es), 2 stale" in text
    assert f"stale prefix 000123: 2 segment(s); streams: {stream}" in text
    assert sorted(p.name for p in shm.iterdir()) == before  # read-only
