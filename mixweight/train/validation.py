"""Per-domain validation loss and perplexity, plus the uniform average and the worst domain.

Loss is the token-weighted mean next-token cross-entropy over a domain's validation
blocks. Under torchrun each process scores a strided slice and the sums are
all-reduced, so the numbers do not depend on the process count. With `blocks=True` each
domain also gets `block_losses`, every block's own mean token loss in block order (the
final evaluation records them in eval.json: the paired bootstrap of the comparison report
resamples them, docs/algorithms.md section 8).
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from pathlib import Path

import torch

from mixweight.core.chunked_loss import lm_token_losses
from mixweight.core.distributed import World, all_reduce_sum
from mixweight.data.manifest import Manifest
from mixweight.data.streams import read_stream
from mixweight.errors import MixweightError


def load_validation(corpus_dir: str | Path, manifest: Manifest, max_blocks: int) -> dict[str, torch.Tensor]:
    """The first `max_blocks` validation blocks of every domain, in write order (deterministic).

    Shards are read with the manifest's seq_len, so a stream whose encodings are not
    mixweight's own is refused before any sample is decoded (see `check_encodings`). A remote
    corpus is read from its cache copy (`corpus_dir`, from `open_corpus`): `fetch_corpus` fetched every
    validation index and shard with streaming's downloaders, after checking the index's encodings.
    """
    val_sets = {}
    for d in manifest.domains:
        stream = manifest.stream_dir(corpus_dir, "val", d)
        val_sets[d] = torch.from_numpy(read_stream(stream, limit=max_blocks, seq_len=manifest.seq_len))
        if len(val_sets[d]) == 0:
            raise MixweightError(
                f"{stream}: domain '{d}' has no validation blocks, so its loss cannot be measured; "
                "re-create the corpus with `mixweight data prepare --val-fraction` > 0"
            )
    return val_sets


@torch.no_grad()
def evaluate_domains(
    model: torch.nn.Module,
    val_sets: dict[str, torch.Tensor],
    batch_size: int,
    world: World | None = None,
    irreducible: dict[str, float | None] | None = None,
    autocast=None,
    loss_impl: str = "auto",
    blocks: bool = False,
) -> dict:
    world = world if world is not None else World()
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    domains = {}
    for name, held in val_sets.items():
        if len(held) == 0:  # a mean over nothing is not a loss of 0.0
            raise MixweightError(f"domain '{name}' has no validation blocks: its validation loss is undefined")
        # Every process runs the same number of forwards (sharded models gather parameters in
        # each one): a process short of blocks repeats block 0 with zero weight.
        per_process = -(-len(held) // world.size)
        indices = list(range(world.rank, len(held), world.size))
        counted = torch.tensor([1.0] * len(indices) + [0.0] * (per_process - len(indices)), dtype=torch.float64)
        mine = held[indices + [0] * (per_process - len(indices))]
        # every block's loss sum and token count, at its own index (zeros elsewhere), summed over processes
        per_block = torch.zeros(len(held), 2, dtype=torch.float64, device=device)
        for start in range(0, per_process, batch_size):
            input_ids = mine[start : start + batch_size].to(device)
            keep = counted[start : start + batch_size].to(device)
            with autocast or nullcontext():  # chunked at large vocab x length: no [B, L, V] logits
                token_losses, mask = lm_token_losses(model, input_ids, loss_impl)
            sums, counts = token_losses.sum(dim=1).double() * keep, mask.sum(dim=1).double() * keep
            where = torch.tensor(indices[start : start + batch_size], dtype=torch.long, device=device)
            per_block[where] += torch.stack([sums, counts], dim=1)[: len(where)]
        all_reduce_sum(per_block, world)
        totals = per_block.sum(dim=0)
        loss = (totals[0] / totals[1].clamp(min=1)).item()
        domains[name] = {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "tokens": int(totals[1].item())}
        if blocks:
            domains[name]["block_losses"] = (per_block[:, 0] / per_block[:, 1].clamp(min=1)).tolist()
        if irreducible and irreducible.get(name) is not None:
            domains[name]["gap_to_irreducible"] = loss - irreducible[name]
    if was_training:
        model.train()
    return summarize(domains)


def without_blocks(summary: dict) -> dict:
    """`summary` less the per-block losses (metrics.jsonl's eval records keep the per-domain numbers only)."""
    domains = {d: {k: v for k, v in s.items() if k != "block_losses"} for d, s in summary["domains"].items()}
    return {**summary, "domains": domains}


def summarize(domains: dict[str, dict]) -> dict:
    """Add the uniform (unweighted) average over domains and the worst domain."""
    losses = {name: stats["loss"] for name, stats in domains.items()}
    average = sum(losses.values()) / len(losses)
    worst = max(losses, key=losses.get)
    return {
        "domains": domains,
        "average_loss": average,
        "average_perplexity": math.exp(min(average, 700.0)),
        "worst_domain": worst,
        "worst_loss": losses[worst],
    }
