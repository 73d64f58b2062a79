"""`mixweight doctor`: the facts a bug report needs, in one command (plain text, or --json).

Versions (mixweight, Python, torch, transformers, mosaicml-streaming), the device (CUDA devices,
or CPU and its cores), which optional extras are installed, and mosaicml-streaming shared memory
left in /dev/shm. Read-only: it removes nothing (a `mixweight train` over the same corpus removes
its own stale segments at start, see mixweight/sampling/shm.py).
"""

from __future__ import annotations

import json
import os
import platform
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
        "extras": {extra: {name: _version(name) for name in names} for extra, names in EXTRAS.items()},
        "shared_memory": _shared_memory(Path(shm_dir)),
    }


def _or_missing(version: str | None) -> str:
    return version or "not installed"


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
