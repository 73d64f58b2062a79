"""How the model is spread over processes: DDP by default, FSDP (fully_shard) with --fsdp.

DDP keeps a full copy per process and averages gradients; FSDP shards parameters,
gradients and optimizer state, for models that do not fit one device. Both average
gradients over processes, which is what the step's world-size scaling assumes.
Checkpoints are always full (unsharded) state written by the main process, so a
checkpoint loads anywhere: one process, DDP or FSDP, with any process count.

With `compile`, the wrapped model is compiled in place (`module.compile()`, after DDP or
fully_shard, as PyTorch documents for both: DDP's optimizer splits the graph at its bucket
boundaries, FSDP2's hooks stay outside the compiled region). In place, not `torch.compile(model)`:
the latter returns a new module whose state_dict keys carry an `_orig_mod.` prefix, which would
leak into save_pretrained; `module.compile()` keeps the module, its keys and DDP's `no_sync`.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule, fully_shard

from mixweight.core.chunked_loss import install_token_loss_forward
from mixweight.core.distributed import World

FULL_ON_CPU = StateDictOptions(full_state_dict=True, cpu_offload=True)


def _blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks: the largest ModuleList (GPT-2's transformer.h, Llama's model.layers)."""
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
    return list(max(lists, key=len)) if lists else []


def wrap_model(model: torch.nn.Module, world: World, fsdp: bool, compile: bool = False) -> torch.nn.Module:
    # The chunked-loss forward mode goes in before compiling, so the compiled forward is the final one.
    install_token_loss_forward(model)
    if world.distributed and fsdp:
        for block in _blocks(model):  # shard block by block, so only one block is gathered at a time
            fully_shard(block)
        fully_shard(model)
    elif world.distributed:
        model = torch.nn.parallel.DistributedDataParallel(model)
    if compile:
        model.compile()
    return model


def grad_sync(model: torch.nn.Module, sync: bool):
    """The context for one micro-batch's forward and backward: all-reduce gradients only when `sync`.

    Under DDP each backward all-reduces the gradients unless it runs inside `model.no_sync()`
    (forward included, as DDP requires); a step syncs only in its last micro-batch's backward, the
    others accumulate locally. FSDP (fully_shard) reduce-scatters in every backward, and a plain
    module has nothing to sync: both get no context.
    """
    if sync or not isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return nullcontext()
    return model.no_sync()


def is_sharded(model: torch.nn.Module) -> bool:
    return isinstance(model, FSDPModule)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


def full_model_state(model: torch.nn.Module) -> dict | None:
    """The full state dict (on the main process under FSDP; a collective: call on every process)."""
    if is_sharded(model):
        full = get_model_state_dict(model, options=FULL_ON_CPU)
        for key in _tied_keys(model):  # gathered tensors lose their sharing: keep one name, as HF saves it
            full.pop(key, None)
        return full
    return unwrap(model).state_dict()


def _tied_keys(model: torch.nn.Module) -> list[str]:
    """Names that refer to a parameter already named earlier (tied input/output embeddings)."""
    seen, tied = set(), []
    for name, value in model.state_dict(keep_vars=True).items():
        if id(value) in seen:
            tied.append(name)
        seen.add(id(value))
    return tied


def full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    if is_sharded(model):
        return get_optimizer_state_dict(model, optimizer, options=FULL_ON_CPU)
    return optimizer.state_dict()


def load_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    if not is_sharded(model):
        optimizer.load_state_dict(state)
        return
    # torch's loader infers the device from existing optimizer state: create it with a zero-lr step.
    for param in model.parameters():
        param.grad = torch.zeros_like(param)
    saved_lrs = [group["lr"] for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["lr"] = 0.0
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    for group, lr in zip(optimizer.param_groups, saved_lrs):
        group["lr"] = lr
    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


def grad_norm_value(norm: torch.Tensor) -> float:
    """clip_grad_norm_ returns a DTensor for sharded parameters."""
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
