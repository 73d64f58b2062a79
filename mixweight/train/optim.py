"""AdamW and the paper's schedule: linear warmup, then cosine decay to a final learning rate."""

from __future__ import annotations

import math

import torch

from mixweight.train.config import TrainConfig


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """Decay matrices only: biases, norm gains and embeddings are left alone (as in GPT-2/Llama recipes)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_matrix = param.dim() >= 2 and "wte" not in name and "wpe" not in name and "embed" not in name
        (decay if is_matrix else no_decay).append(param)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # The fused kernel (one pass over all parameters, CPU and CUDA) is the fastest AdamW; sharded
    # (DTensor) parameters take the foreach implementation.
    sharded = any(type(p).__name__ == "DTensor" for p in decay + no_decay)
    return torch.optim.AdamW(
        groups, lr=config.lr, betas=(config.adam_beta1, config.adam_beta2), eps=1e-8, fused=not sharded
    )


def lr_multiplier(step: int, warmup_steps: int, total_steps: int, final_ratio: float) -> float:
    """Multiplier of the peak lr at `step` (0-based, the step about to be taken)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / decay_steps, 1.0)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return final_ratio + (1.0 - final_ratio) * cosine


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    final_ratio = config.final_lr / config.lr
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_multiplier(step, config.warmup_steps, config.steps, final_ratio)
    )
