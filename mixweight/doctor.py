"""`mixweight doctor`: the facts a bug report needs, in one command (plain text, or --json).

Versions (mixweight, Python, torch, transformers, mosaicml-streaming), the device (CUDA devices,
or CPU and its cores), the CPU's model and what torch computes with on it (intra/inter-op threads,
the thread variables set, its BLAS and oneDNN builds, the vector ISA it dispatches to: the same
job runs at different speeds on CPUs of one core count), which optional extras are installed,
and mosaicml-streaming shared memory left in /dev/shm. Read-only: it removes nothing (a `mixweight
train` over the same corpus removes its own stale segments at start, see mixweight/sampling/shm.py).
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import ClassVar

import mixweight
from mixweight.core.config import option


@dataclass
class DoctorConfig:
    """`mixweight doctor`."""

    COMMAND: ClassVar[str] = "doctor"

    json: bool = option(False, "print JSON instead of text (default: text)")


# Distribution names: what `pip install` takes and `importlib.metadata` knows.
CORE = ("torch", "transformers", "mosaicml-streaming", "datasets", "tokenizers", "numpy", "safetensors")
EXTRAS = {
    "eval": ("lm-eval",),
    "tracking": ("tensorboard", "wandb", "mlflow"),
    "s3": ("boto3",),
    "cluster": ("scikit-learn", "faiss-cpu", "faiss-gpu"),
    "regmix": ("lightgbm",),
    "submitit": ("submitit",),
    "ray": ("ray",),
}
# MKL's verbose banner for its generic kernels (no AVX2/AVX-512 dispatch): what it picks on non-Intel CPUs.
GENERIC_MKL_PATH = "Intel(R) Architecture processors"
# Environment variables that set how many threads torch's OpenMP, MKL and oneDNN use, or which code path MKL takes.
THREAD_ENV = (
    "OMP_NUM_THREADS",
    "OMP_WAIT_POLICY",
    "GOMP_SPINCOUNT",
    "MKL_NUM_THREADS",
    "MKL_DEBUG_CPU_TYPE",
    "MKL_ENABLE_INSTRUCTIONS",
    "KMP_AFFINITY",
)


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _device() -> dict:
    import torch

    info = {
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "cpu_count": os.cpu_count(),
        "devices": [],
    }
    if info["cuda_available"]:
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            info["devices"].append({"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1)})
    return info


def _cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux); else what the platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip().lower() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _build_line(config: str, pattern: str) -> str | None:
    found = re.search(pattern, config)
    return found.group(1).strip() if found else None


def _mkl_code_path() -> str | None:
    """The kernels MKL dispatches to on this CPU, from its verbose banner ("Intel(R) AVX-512 ...", or "Intel(R)
    Architecture processors": its generic ones, what it picks on a CPU that is not Intel's). The banner is printed
    once per process, so a child process multiplies two small matrices with MKL_VERBOSE=1."""
    code = "import torch; a = torch.ones(8, 8); torch.mm(a, a)"
    try:
        done = subprocess.run(
            [sys.executable, "-c", code], env={**os.environ, "MKL_VERBOSE": "1"}, capture_output=True, text=True
        )
    except OSError:
        return None
    found = re.search(r"for Intel\(R\) 64 architecture (.+?), Lnx", done.stdout)
    return found.group(1) if found else None


def _cpu() -> dict:
    """The CPU and torch's compute on it: threads, BLAS and oneDNN builds (torch.__config__.show()), vector ISA."""
    import torch

    config = torch.__config__.show()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "model": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "thread_env": {name: os.environ[name] for name in THREAD_ENV if name in os.environ},
        "blas": _build_line(config, r"BLAS_INFO=([^,\s]+)"),
        "mkl": _build_line(config, r"Math Kernel Library Version ([^\s-]+)"),
        "mkl_available": torch.backends.mkl.is_available(),
        "mkl_code_path": _mkl_code_path() if torch.backends.mkl.is_available() else None,
        "onednn": _build_line(config, r"MKL-DNN (v[\d.]+)"),
        "onednn_available": torch.backends.mkldnn.is_available(),
        "onednn_enabled": bool(torch.backends.mkldnn.enabled),
    }


def _shared_memory(shm_dir: Path) -> dict:
    """mosaicml-streaming segments by prefix: owner, whether a live process maps them, the streams registered."""
    from streaming.base.constant import LOCALS

    from mixweight.sampling.shm import mapped_prefixes, registered_locals, streaming_segments

    by_prefix = streaming_segments(shm_dir)
    live = mapped_prefixes(shm_dir) if by_prefix else set()
    prefixes = []
    for prefix, segments in sorted(by_prefix.items()):
        try:
            mine = all(s.stat().st_uid == os.getuid() for s in segments)
        except OSError:
            mine = False
        locals_segment = shm_dir / f"{prefix}_{LOCALS}"
        streams = registered_locals(locals_segment) if locals_segment in segments else []
        in_use = prefix in live
        prefixes.append(
            {
                "prefix": prefix,
                "segments": len(segments),
                "streams": streams,
                "ours": mine,
                "in_use": in_use,
                "stale": mine and not in_use,
            }
        )
    return {"dir": str(shm_dir), "prefixes": prefixes}


def collect(shm_dir: str | Path = "/dev/shm") -> dict:
    return {
        "mixweight": mixweight.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in CORE},
        "device": _device(),
        "cpu": _cpu(),
        "extras": {extra: {name: _version(name) for name in names} for extra, names in EXTRAS.items()},
        "shared_memory": _shared_memory(Path(shm_dir)),
    }


def _or_missing(version: str | None) -> str:
    return version or "not installed"


def _render_cpu(cpu: dict) -> list[str]:
    cores = f"{cpu['cores']} cores"
    if cpu["usable_cores"] != cpu["cores"]:
        cores += f" ({cpu['usable_cores']} usable)"
    env = ", ".join(f"{k}={v}" for k, v in cpu["thread_env"].items()) or "no thread variables set"
    mkl = f"MKL {cpu['mkl']}" if cpu["mkl"] else "no MKL"
    if cpu["mkl_code_path"]:
        generic = cpu["mkl_code_path"] == GENERIC_MKL_PATH
        mkl += f" (kernels: {cpu['mkl_code_path']}" + (", MKL's generic ones)" if generic else ")")
    if not cpu["mkl_available"]:
        mkl += " (unavailable)"
    onednn = f"oneDNN {cpu['onednn'] or '(version unknown)'}" if cpu["onednn_available"] else "no oneDNN"
    if cpu["onednn_available"]:
        onednn += " enabled" if cpu["onednn_enabled"] else " disabled (torch.backends.mkldnn.enabled = False)"
    return [
        f"cpu: {cpu['model']}, {cores}, vector ISA {cpu['capability']}",
        f"torch threads: {cpu['torch_threads']} intra-op, {cpu['interop_threads']} inter-op ({env})",
        f"blas: {cpu['blas'] or 'unknown'}; {mkl}; {onednn}",
    ]


def render(info: dict) -> str:
    device = info["device"]
    if device["cuda_available"]:
        names = ", ".join(f"{d['name']} ({d['memory_gib']} GiB)" for d in device["devices"])
        where = (
            f"CUDA {device['torch_cuda']}, {len(device['devices'])} device(s): {names}; {device['cpu_count']} CPU cores"
        )
    else:
        built = f"torch built with CUDA {device['torch_cuda']}" if device["torch_cuda"] else "torch built for CPU"
        where = f"CPU, {device['cpu_count']} cores (no CUDA device; {built})"
    lines = [
        f"mixweight {info['mixweight']}",
        f"python {info['python']} on {info['platform']}",
        "packages: " + ", ".join(f"{name} {_or_missing(v)}" for name, v in info["packages"].items()),
        f"device: {where}",
        *_render_cpu(info["cpu"]),
        "extras:",
    ]
    for extra, packages in info["extras"].items():
        lines.append(f"  {extra}: " + ", ".join(f"{name} {_or_missing(v)}" for name, v in packages.items()))
    shm = info["shared_memory"]
    stale = [p for p in shm["prefixes"] if p["stale"]]
    lines.append(
        f"mosaicml-streaming shared memory in {shm['dir']}: "
        f"{sum(p['segments'] for p in shm['prefixes'])} segment(s) in {len(shm['prefixes'])} prefix(es), "
        f"{len(stale)} stale (yours, mapped by no live process)"
    )
    for p in stale:
        streams = ", ".join(p["streams"]) or "no streams registered"
        lines.append(f"  stale prefix {p['prefix']}: {p['segments']} segment(s); streams: {streams}")
    if stale:
        lines.append("  (doctor removes nothing; `mixweight train` over that corpus removes them at start)")
    return "\n".join(lines)


def run_doctor(as_json: bool = False, shm_dir: str | Path = "/dev/shm") -> str:
    info = collect(shm_dir)
    return json.dumps(info, indent=2) if as_json else render(info)
