"""Per-token losses of a causal LM, from the full logits or chunk by chunk without them.

The plain path (`full`) asks the model for its logits [B, L, V] and takes cross-entropy over
them: at B=32, L=512, V=50257 that is 3.3 GB in fp32, plus its gradient and log-softmax.
The `chunked` path takes the final hidden states (the base model's output, after the final
norm) and applies the output projection and cross-entropy over chunks of token rows; the
backward recomputes each chunk's logits, so no more than one chunk of logits (and its
softmax) is alive at any time. Both return the per-token losses [B, L-1] and the counted-token
mask, from which per-sample losses (and DoReMi's per-token excess) follow exactly.

Wrappers: the chunked loss runs inside the model's own forward call (a second forward mode
installed on the HF model: `mixweight_labels=...`), so DDP (gradient hooks, no_sync),
FSDP (parameters gathered only inside the root module's forward) and torch.compile
(`module.compile()`) see it as one ordinary forward of the wrapped model.

Where the fp32 cast happens: the logits (a chunk's, or the full tensor) are produced in the
model's compute dtype (bf16 under autocast) and cast to fp32 right before log-softmax;
every loss, sum and weight downstream is fp32 (weights: float64 where the reduction says so).
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F

from mixweight.core.loss import IGNORE_INDEX, per_token_losses
from mixweight.errors import MixweightError

LOSS_IMPLS = ("auto", "full", "chunked")
# `auto` chunks when one sequence's logits hold at least this many values (V x L): 2^22 floats = 16 MiB
# per sequence in fp32 (GPT-2's vocabulary at L >= 84, a 32k vocabulary at L >= 132). Below it, the
# logits are small next to the transformer's own activations and chunking would only add the head's
# recomputation; above it, the logits, their log-softmax and their gradient dominate peak memory.
AUTO_CHUNK_MIN_VL = 2**22
# Logit values per chunk: 2^24 floats = 64 MiB in fp32 (334 token rows at V = 50257).
CHUNK_ELEMENTS = 2**24


def chunk_rows(vocab_size: int) -> int:
    return max(1, CHUNK_ELEMENTS // max(vocab_size, 1))


def resolve_loss_impl(impl: str, model: torch.nn.Module, seq_len: int) -> str:
    """`full` or `chunked`: what `auto` means for this model and sequence length."""
    if impl not in LOSS_IMPLS:
        raise MixweightError(f"train: 'loss_impl' must be one of {', '.join(LOSS_IMPLS)}, got {impl!r}")
    if impl != "auto":
        return impl
    head = _output_head(model)
    if head is None:
        return "full"
    return "chunked" if head.weight.shape[0] * seq_len >= AUTO_CHUNK_MIN_VL else "full"


def _hf(model: torch.nn.Module) -> torch.nn.Module:
    """The HF model inside DDP (`.module`); FSDP2 and `module.compile()` act in place."""
    return getattr(model, "module", model)


def _output_head(model: torch.nn.Module):
    hf = _hf(model)
    getter = getattr(hf, "get_output_embeddings", None)
    head = getter() if getter is not None else None
    if head is None or getattr(hf, "base_model", None) is None or not isinstance(head, torch.nn.Linear):
        return None
    return head


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """cross_entropy(hidden @ W^T + b, labels) per row, chunk by chunk; the backward recomputes each chunk.

    hidden [N, H], labels [N] (IGNORE_INDEX: loss 0, no gradient) -> losses [N] fp32. Each chunk's
    forward is F.cross_entropy on that chunk's logits, so the losses equal the full path's row by row.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, rows):
        device_type = hidden.device.type
        ctx.autocast = (torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type))
        losses = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], rows):
            end = min(start + rows, hidden.shape[0])
            logits = F.linear(hidden[start:end], weight, bias).float()  # the fp32 cast (no-op in fp32)
            losses[start:end] = F.cross_entropy(logits, labels[start:end], ignore_index=IGNORE_INDEX, reduction="none")
        ctx.rows = rows
        ctx.save_for_backward(hidden, weight, bias, labels)
        return losses

    @staticmethod
    def backward(ctx, grad_losses):
        hidden, weight, bias, labels = ctx.saved_tensors
        enabled, dtype = ctx.autocast
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        # summed over chunks in at least fp32 (fp64 for a float64 model: the chunks' sum is then as exact as
        # one matmul's, whatever the chunking or the split of rows over processes)
        accumulate = torch.promote_types(weight.dtype, torch.float32)
        grad_weight = torch.zeros(weight.shape, dtype=accumulate, device=weight.device)
        grad_bias = torch.zeros(weight.shape[0], dtype=accumulate, device=weight.device) if bias is not None else None
        counted = labels != IGNORE_INDEX
        scale = torch.where(counted, grad_losses.float(), torch.zeros_like(grad_losses, dtype=torch.float32))
        safe_labels = torch.where(counted, labels, torch.zeros_like(labels))
        with torch.autocast(hidden.device.type, dtype=dtype, enabled=enabled):  # as the forward computed it
            for start in range(0, hidden.shape[0], ctx.rows):
                end = min(start + ctx.rows, hidden.shape[0])
                chunk = hidden[start:end]
                logits = F.linear(chunk, weight, bias)
                compute_dtype = logits.dtype
                # d loss / d logits = softmax - onehot, times the incoming gradient (0 for ignored rows)
                probs = torch.softmax(logits.float(), dim=-1)
                rows = torch.arange(end - start, device=probs.device)
                probs[rows, safe_labels[start:end]] -= 1.0
                probs.mul_(scale[start:end, None])
                grad_logits = probs.to(compute_dtype)
                del logits, probs
                if grad_hidden is not None:
                    grad_hidden[start:end] = (grad_logits @ weight.to(compute_dtype)).to(hidden.dtype)
                grad_weight += (grad_logits.t() @ chunk.to(compute_dtype)).to(accumulate)
                if grad_bias is not None:
                    grad_bias += grad_logits.to(accumulate).sum(dim=0)
        grad_weight = grad_weight.to(weight.dtype) if ctx.needs_input_grad[1] else None
        if grad_bias is not None:
            grad_bias = grad_bias.to(bias.dtype) if ctx.needs_input_grad[2] else None
        return grad_hidden, grad_weight, grad_bias, None, None


def chunked_token_losses(
    hidden: torch.Tensor, head: torch.nn.Linear, labels: torch.Tensor, rows: int | None = None
) -> torch.Tensor:
    """Per-token next-token losses [B, L-1] (0 where ignored) from final hidden states [B, L, H]."""
    batch, length, width = hidden.shape
    shifted_hidden = hidden[:, :-1, :].reshape(-1, width)
    shifted_labels = labels[:, 1:].reshape(-1)
    rows = rows or chunk_rows(head.weight.shape[0])
    losses = _ChunkedLinearCrossEntropy.apply(shifted_hidden, head.weight, head.bias, shifted_labels, rows)
    return losses.view(batch, length - 1)


def _forward_with_token_losses(self, *args, mixweight_labels=None, mixweight_rows=None, **kwargs):
    """The HF model's forward, or with `mixweight_labels` its per-token losses computed chunk by chunk."""
    if mixweight_labels is None:
        return type(self).forward(self, *args, **kwargs)
    hidden = self.base_model(*args, use_cache=False, **kwargs)[0]  # after the final norm, for GPT-2 and Llama
    return chunked_token_losses(hidden, self.get_output_embeddings(), mixweight_labels, mixweight_rows)


def install_token_loss_forward(model: torch.nn.Module) -> None:
    """Give the HF model inside `model` the chunked forward mode (idempotent; keeps state_dict keys)."""
    hf = _hf(model)
    if getattr(hf.forward, "__func__", None) is not _forward_with_token_losses:
        # a bound method (not a closure): copy.deepcopy rebinds it to the copy
        hf.forward = types.MethodType(_forward_with_token_losses, hf)


def lm_token_losses(
    model: torch.nn.Module, input_ids: torch.Tensor, impl: str = "auto", labels: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token losses [B, L-1] fp32 (0 where ignored) and the counted-token mask, by `impl`.

    `model` may be wrapped (DDP, FSDP, compiled); call it under the run's autocast context.
    """
    labels = input_ids if labels is None else labels
    impl = resolve_loss_impl(impl, model, input_ids.shape[1])
    if impl == "full":
        return per_token_losses(model(input_ids=input_ids).logits, labels)
    if _output_head(model) is None:
        raise MixweightError(
            "train: loss_impl chunked needs a Hugging Face causal LM with a linear output "
            "head (get_output_embeddings); use loss_impl full for this model"
        )
    install_token_loss_forward(model)
    losses = model(input_ids=input_ids, mixweight_labels=labels)
    return losses, labels[:, 1:] != IGNORE_INDEX


def sample_means(token_losses: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean loss of each sequence over its counted tokens [B]; 0 for a sequence with none (no signal)."""
    return token_losses.sum(dim=1) / mask.sum(dim=1).clamp(min=1)
