"""`mixweight doctor`: versions, device, extras, stale shared memory; text and JSON; removes nothing."""

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

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


def test_doctor_names_the_cpu_torch_threads_and_the_blas_in_use():
    import torch

    from mixweight.doctor import THREAD_ENV

    env = {k: v for k, v in os.environ.items() if k not in THREAD_ENV}
    env.update(OMP_NUM_THREADS="1", MKL_DEBUG_CPU_TYPE="5")
    doctor = [sys.executable, "-m", "mixweight", "doctor"]
    done = subprocess.run([*doctor, "--json"], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    cpu = json.loads(done.stdout)["cpu"]
    assert cpu["cores"] == os.cpu_count() and 1 <= cpu["usable_cores"] <= cpu["cores"]
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():  # Linux: the model name the kernel reports, as lscpu shows it
        lines = cpuinfo.read_text().splitlines()
        names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
        assert cpu["model"] == (names[0] if names else cpu["model"])
    assert cpu["model"] and cpu["capability"] == torch.backends.cpu.get_cpu_capability()
    assert cpu["torch_threads"] == 1  # the subprocess's OMP_NUM_THREADS, as torch read it
    assert cpu["thread_env"] == {"OMP_NUM_THREADS": "1", "MKL_DEBUG_CPU_TYPE": "5"}
    config = torch.__config__.show()
    assert f"BLAS_INFO={cpu['blas']}," in config
    assert cpu["mkl_available"] == torch.backends.mkl.is_available()
    if cpu["mkl"]:
        assert f"Math Kernel Library Version {cpu['mkl']}" in config
    assert cpu["onednn_available"] == torch.backends.mkldnn.is_available()
    assert cpu["onednn_enabled"] == cpu["onednn_available"]  # torch's default: on wherever it is built
    if cpu["onednn"]:
        assert f"MKL-DNN {cpu['onednn']}" in config
    if cpu["mkl_available"]:  # MKL's own banner names the kernels it dispatched to
        banner = subprocess.run(
            [sys.executable, "-c", "import torch; a = torch.ones(4, 4); torch.mm(a, a)"],
            capture_output=True,
            text=True,
            env={**env, "MKL_VERBOSE": "1"},
        ).stdout
        assert cpu["mkl_code_path"] and f"architecture {cpu['mkl_code_path']}, " in banner

    text = subprocess.run(doctor, capture_output=True, text=True, env=env).stdout
    assert f"cpu: {cpu['model']}, {cpu['cores']} cores" in text
    assert "torch threads: 1 intra-op" in text and "OMP_NUM_THREADS=1, MKL_DEBUG_CPU_TYPE=5" in text
    assert f"blas: {cpu['blas']}; " in text


def test_doctor_text_says_when_mkl_or_onednn_is_missing_or_off(tmp_path):
    info = collect(tmp_path)
    info["cpu"].update(mkl=None, mkl_available=False, mkl_code_path=None)
    info["cpu"].update(onednn="v3.1", onednn_available=True, onednn_enabled=False)
    text = render(info)
    assert "no MKL (unavailable); oneDNN v3.1 disabled (torch.backends.mkldnn.enabled = False)" in text
    info["cpu"].update(onednn_available=False, thread_env={})
    text = render(info)
    assert "no oneDNN" in text and "(no thread variables set)" in text


def test_doctor_says_when_mkl_runs_its_generic_kernels(tmp_path):
    from mixweight.doctor import GENERIC_MKL_PATH

    info = collect(tmp_path)
    info["cpu"].update(mkl="2024.2", mkl_available=True, mkl_code_path=GENERIC_MKL_PATH)
    assert f"MKL 2024.2 (kernels: {GENERIC_MKL_PATH}, MKL's generic ones)" in render(info)
    info["cpu"]["mkl_code_path"] = "Intel(R) Advanced Vector Extensions 512 (Intel(R) AVX-512)"
    assert "MKL 2024.2 (kernels: Intel(R) Advanced Vector Extensions 512 (Intel(R) AVX-512));" in render(info)
