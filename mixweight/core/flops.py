"""Training FLOPs: the one place where the work of a forward or a backward pass is counted
(docs/algorithms.md section 7).

Per token of a sequence of T tokens, for a decoder-only transformer (PaLM, Chowdhery et al. 2022,
appendix B; the same count as Hoffmann et al. 2022, appendix F, less its softmax and norm terms):

    forward   2 N + 4 n_layer d_attn T        N: the parameters that take part in a matmul per token
    training  3 x forward = 6 N + 12 n_layer d_attn T     (the backward is twice the forward)

N is every parameter but the lookup tables (input token and position embeddings, which cost no
matmul), plus the output projection when it shares its matrix with the input embedding (the
matrix is then used once per token as a matmul). d_attn = heads x head dimension; the attention
term counts QK^T and the weighted sum over all T positions (no saving for the causal mask), as
PaLM does. Kaplan et al. 2020 (section 2.1) give the same 6 N with the attention term halved.

Pure functions of numbers and of a model's parameters; no process group, no files.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

FORMULA = "6 N + 12 n_layer d_attn T per trained token (PaLM appendix B); forward 2 N + 4 n_layer d_attn T"


@dataclass(frozen=True)
class ModelShape:
    """What a transformer's FLOPs per token depend on."""

    matmul_params: int  # N: parameters used in a matmul per token (no lookup tables; a tied output counted once)
    layers: int
    attention_width: int  # d_attn: heads x head dimension
    seq_len: int  # T: tokens per sequence

    def to_json(self) -> dict:
        return asdict(self)


def forward_flops_per_token(shape: ModelShape) -> float:
    return 2.0 * shape.matmul_params + 4.0 * shape.layers * shape.attention_width * shape.seq_len


def training_flops_per_token(shape: ModelShape) -> float:
    """Forward and backward (the backward does twice the forward's work: gradients of inputs and weights)."""
    return 3.0 * forward_flops_per_token(shape)


def training_flops(shape: ModelShape, tokens: float) -> float:
    return training_flops_per_token(shape) * tokens


def forward_flops(shape: ModelShape, tokens: float) -> float:
    return forward_flops_per_token(shape) * tokens


def matmul_params(model: torch.nn.Module) -> int:
    """N of a causal LM: its distinct parameters less every embedding table (lookups), plus the output
    projection's matrix when it is one of those tables (tied embeddings: it is a matmul at the output)."""
    seen, total = set(), 0
    for param in model.parameters():
        if id(param) not in seen:
            seen.add(id(param))
            total += param.numel()
    tables = {id(m.weight): m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    tied_output = output is not None and id(output.weight) in tables
    return total - sum(tables.values()) + (output.weight.numel() if tied_output else 0)


def model_shape(model: torch.nn.Module, seq_len: int) -> ModelShape:
    """The shape of a Hugging Face causal LM (its config gives layers, heads and head dimension)."""
    config = model.config
    heads = int(config.num_attention_heads)
    head_dim = getattr(config, "head_dim", None) or int(config.hidden_size) // heads
    return ModelShape(matmul_params(model), int(config.num_hidden_layers), heads * int(head_dim), int(seq_len))


def inner_products_flops(rows: int, size: int) -> float:
    """[rows, size] @ [size, rows]: every pair of rows' inner product (DoGE's scores)."""
    return 2.0 * rows * rows * size


def row_mix_flops(rows: int, size: int) -> float:
    """[rows] @ [rows, size]: a weighted sum of rows (DoGE's applied gradient)."""
    return 2.0 * rows * size
