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
    """Parameter counts and FLOPs per token of `spec` on the corpus (model built on the meta device)."""
    import torch
    from transformers import AutoModelForCausalLM

    from mixweight.core.model import build_config
    from mixweight.data.manifest import load_manifest

    manifest = load_manifest(corpus)
    config = build_config(spec, manifest)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    total = sum(p.numel() for p in model.parameters())  # a tied weight is listed once
    embedding = model.get_input_embeddings().weight
    output = model.get_output_embeddings()
    tied = output is not None and output.weight is embedding
    positions = sum(
        m.weight.numel()
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Embedding)
        and name.rsplit(".", 1)[-1] in ("wpe", "position_embeddings", "embed_positions")
    )
    # The input embedding is a lookup, not a matmul; the output projection is one (counted once when tied).
    matmul = total - positions - (0 if tied else embedding.numel())
    layers, heads = config.num_hidden_layers, config.num_attention_heads
    head_size = config.hidden_size // heads
    attention = 12 * layers * heads * head_size * manifest.seq_len
    return {
        "parameters": total,
        "matmul_parameters": matmul,
        "layers": layers,
        "heads": heads,
        "head_size": head_size,
        "seq_len": manifest.seq_len,
        "vocab_size": manifest.vocab_size,
        "flops_per_token": 6 * matmul + attention,
        "attention_flops_per_token": attention,
    }
