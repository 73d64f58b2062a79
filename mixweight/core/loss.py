"""Per-sample language-model loss: the quantity every weighting in mixweight acts on."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def per_token_losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token cross-entropy per position [B, T-1], fp32 (0 where ignored), and the counted-token mask.

    logits [B, T, V] predict labels shifted by one; labels equal to -100 are ignored. The logits
    arrive in the model's compute dtype (bf16 under autocast) and are cast to fp32 here, before
    log-softmax: every loss and weight downstream is fp32.
    """
    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    token_loss = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)),
        shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view(shift_labels.shape)
    return token_loss, shift_labels != IGNORE_INDEX


def token_loss_sums(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token cross-entropy and the number of counted tokens, per sequence.

    Sums (not means) let evaluation form exact token-weighted means across batches.
    """
    token_loss, mask = per_token_losses(logits, labels)
    return token_loss.sum(dim=1), mask.sum(dim=1)


def per_sample_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of each sequence over its non-ignored tokens: [B], float32.

    A sequence with no counted token gets loss 0 (it carries no signal) rather than NaN.
    """
    sums, counts = token_loss_sums(logits, labels)
    return sums / counts.clamp(min=1)
