"""FLOPs per token of a model spec and the device's peak dense bf16 FLOPs: the two halves of MFU."""

from __future__ import annotations

import re
from pathlib import Path

# Peak dense bf16 tensor FLOPs (no sparsity), from the vendor data sheets. The H100 entry is the SXM part
# (reported as "H100 80GB HBM3"); the PCIe (756e12) and NVL (835e12) parts differ, so they stay unknown.
PEAK_BF16 = [
    (re.compile(r"H200"), 989e12),
    (re.compile(r"H100(?!.*(PCIe|NVL))"), 989e12),
    (re.compile(r"A100"), 312e12),
    (re.compile(r"\bL4\b"), 121e12),
]


def peak_bf16_flops(device_name: str | None) -> float | None:
    """The device's peak dense bf16 FLOPs from the table, or None when it is not in the table."""
    if not device_name:
        return None
    for pattern, flops in PEAK_BF16:
        if pattern.search(device_name):
            return flops
    return None


def model_flops(spec: str, corpus: str | Path) -> dict:
    """Parameter counts and FLOPs per token of `spec` on the corpus (model built on the meta device); the count is
    mixweight's own (mixweight/core/flops.py: 6 N + 12 n_layer d_attn T per trained token)."""
    import torch
    from transformers import AutoModelForCausalLM

    from mixweight.core.flops import model_shape, training_flops_per_token
    from mixweight.core.model import build_config
    from mixweight.data.manifest import load_manifest

    manifest = load_manifest(corpus)
    config = build_config(spec, manifest)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    shape = model_shape(model, manifest.seq_len)
    heads = config.num_attention_heads
    attention = 12 * shape.layers * shape.attention_width * shape.seq_len
    return {
        "parameters": sum(p.numel() for p in model.parameters()),  # a tied weight is listed once
        "matmul_parameters": shape.matmul_params,
        "layers": shape.layers,
        "heads": heads,
        "head_size": shape.attention_width // heads,
        "seq_len": manifest.seq_len,
        "vocab_size": manifest.vocab_size,
        "flops_per_token": training_flops_per_token(shape),
        "attention_flops_per_token": attention,
    }
