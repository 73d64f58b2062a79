"""Model specs (HF config JSON in proxies/) -> causal LMs sized for a given corpus."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from mixweight.errors import MixweightError, first_line

if TYPE_CHECKING:  # a type only: core sits below data (tests/test_layering.py)
    from mixweight.data.manifest import Manifest

# proxies/ sits beside the package in a checkout (`pip install -e .`).
SPEC_DIRS = [Path(__file__).resolve().parents[2] / "proxies", Path.cwd() / "proxies"]
POSITION_KEYS = ("n_positions", "max_position_embeddings")


def available_specs() -> list[str]:
    return sorted({p.stem for d in SPEC_DIRS if d.is_dir() for p in d.glob("*.json")})


def resolve_spec(spec: str) -> Path:
    """A spec is a path to a JSON file or the name of one in proxies/."""
    path = Path(spec)
    if path.suffix == ".json" and path.is_file():
        return path
    for directory in SPEC_DIRS:
        candidate = directory / f"{spec}.json"
        if candidate.is_file():
            return candidate
    raise MixweightError(
        f"model spec '{spec}': not a JSON file nor a name in proxies/; available: {', '.join(available_specs())}"
    )


def load_spec(spec: str) -> dict:
    path = resolve_spec(spec)
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise MixweightError(f"model spec {path}: not valid JSON ({exc})") from exc
    if not isinstance(raw, dict) or "model_type" not in raw:
        raise MixweightError(f'model spec {path}: needs a \'model_type\' (an HF config, e.g. "gpt2" or "llama")')
    refuse_custom_code(raw, f"model spec {path}")
    return {k: v for k, v in raw.items() if not k.startswith("_")}


def refuse_custom_code(config: dict, where: str) -> None:
    """An HF config with `auto_map` asks to import Python shipped beside it; mixweight never runs code from files."""
    if "auto_map" in config:
        raise MixweightError(
            f"{where}: has 'auto_map' (model code shipped with the files, model_type {config.get('model_type')!r}); "
            "mixweight never runs code from files: use a model_type transformers ships (gpt2, llama, ...)"
        )


def max_positions(config: PretrainedConfig) -> int | None:
    for key in POSITION_KEYS:
        if getattr(config, key, None) is not None:
            return int(getattr(config, key))
    return None


def build_config(spec: str, manifest: Manifest) -> PretrainedConfig:
    """The HF config of `spec` with the corpus's vocabulary, checked against the corpus."""
    raw = load_spec(spec)
    where = resolve_spec(spec)
    if "vocab_size" in raw and raw["vocab_size"] != manifest.vocab_size:
        raise MixweightError(
            f"model spec {where}: vocab_size {raw['vocab_size']} conflicts with the corpus's {manifest.vocab_size}; "
            "remove vocab_size from the spec (it is taken from the corpus manifest) "
            "or use a corpus made with that tokenizer"
        )
    model_type = raw.pop("model_type")
    try:
        config = AutoConfig.for_model(model_type, **raw)
    except (ValueError, TypeError) as exc:
        raise MixweightError(f"model spec {where}: {exc}") from exc
    config.vocab_size = manifest.vocab_size
    if manifest.eos_id is not None:
        config.eos_token_id = manifest.eos_id
        config.bos_token_id = manifest.eos_id
    positions = max_positions(config)
    if positions is not None and manifest.seq_len > positions:
        raise MixweightError(
            f"model spec {where}: the corpus's seq_len {manifest.seq_len} exceeds the model's {positions} positions; "
            "prepare the corpus with a smaller --seq-len or raise the spec's position limit"
        )
    return config


def build_model(spec: str, manifest: Manifest, seed: int) -> PreTrainedModel:
    config = build_config(spec, manifest)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, trust_remote_code=False)


def load_model(model_dir: str | Path) -> PreTrainedModel:
    """A checkpoint's model: its config.json is checked first, and only safetensors weights are read."""
    model_dir = Path(model_dir)
    config_path = model_dir / "config.json"
    try:
        raw = json.loads(config_path.read_text())
    except FileNotFoundError as exc:
        raise MixweightError(f"{model_dir}: no config.json; not a model saved by mixweight") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MixweightError(f"{config_path}: not valid JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise MixweightError(f"{config_path}: not an HF model config (expected a JSON object)")
    refuse_custom_code(raw, str(config_path))
    try:
        return AutoModelForCausalLM.from_pretrained(
            str(model_dir), trust_remote_code=False, local_files_only=True, use_safetensors=True
        )
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as exc:  # a truncated or random file
        raise MixweightError(
            f"{model_dir}: cannot load the model ({first_line(exc)}); the checkpoint is truncated or corrupted, "
            "or not a mixweight checkpoint: evaluate another checkpoint (--checkpoint step-N)"
        ) from exc


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
