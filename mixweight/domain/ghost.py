"""DoGE's per-domain gradients from one forward and one backward (docs/algorithms.md section 3.7).

DoGE needs, for every domain present in a step, the gradient of that domain's summed loss:
one row of a [R, P] matrix per domain (training domains, targets, the held-out mixture). The
`loop` form gets each row from its own forward and backward over the domain's samples. This
module gets all of them from ONE forward and ONE backward of the micro-batch's summed loss:

- A causal LM's samples do not interact (attention is within a sequence, norms act per
  token, there is no batch norm), so the gradient of the summed loss with respect to a
  layer's output, at a token of sample s, is the gradient of s's own loss alone.
- A layer's weight gradient is a sum over tokens of a product of the token's layer input and
  its output gradient. Summing only domain d's tokens gives domain d's gradient exactly.
- The micro-batch is reordered so each domain's samples are contiguous: a domain's tokens
  are a slice (a view, no copy) of every layer's input and output gradient.

Which parameters take which path (`parameter_paths` reports it):
- nn.Linear, transformers' Conv1D (GPT-2's, weight [d_in, d_out]): weight += g_d^T a_d (a
  matmul per domain over the domain's tokens: the FLOPs of one weight gradient in all),
  bias += the sum of g_d.
- nn.Embedding (no max_norm, scale_grad_by_freq or sparse): the rows of the domain's token
  ids receive their output gradients (index_add), padding_idx excluded. A position embedding
  called with a batch of 1 and broadcast over the batch (GPT-2's wpe) is expanded to the
  batch in its forward hook so each sample's output gradient is seen (same values).
  GPT-2's tied lm_head/wte weight is one parameter used by two modules: both add into its row.
- nn.LayerNorm (1-d normalized shape): weight += sum g * layer_norm(a) without affine,
  bias += sum g. RMSNorm (torch's, or a class named *RMSNorm whose one parameter is a 1-d
  `weight`, as Llama's): weight += sum g * the module's output with the weight set to ones.
- Anything else, and any parameter one of whose modules is not covered above (or is called
  with a batch dimension that is not the micro-batch's): the loop form's path, one backward
  per domain, restricted to those parameters, reusing the one forward (retain_graph).

Only the output gradients are obtained from autograd: the backward asks for the gradient of
the embeddings' outputs, which passes through every layer (hooks on the layer outputs read
the output gradient as it goes by), and computes no weight gradient of its own. Peak memory
is that of an ordinary backward plus the [R, P] rows (which the loop form holds too) and, per
embedding, an [R, V, d] sum while its rows are written.

Safety net: on the first micro-batch the backward also asks autograd for the covered
parameters' ordinary gradients and checks that the domain rows sum to them. A parameter that
disagrees (a model that uses it outside the modules above, or a norm of another form) is
moved to the per-domain-backward path for the rest of the run, and the step is recomputed.
"""

from __future__ import annotations

import functools
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

VERIFY_RTOL = 1e-3  # the first-step check; disagreement from a missed use is of order 1
VERIFY_RTOL_AUTOCAST = 5e-2  # autograd's own weight gradients are then bf16/fp16 matmuls


class Recompute(Exception):
    """The first-step check moved parameters to the per-domain path: compute the step again."""


def _kind(module: nn.Module) -> str | None:
    """The covered module kinds (see the module docstring); None: not covered."""
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, Conv1D):
        return "conv1d"
    if isinstance(module, nn.Embedding):
        plain = module.max_norm is None and not module.scale_grad_by_freq and not module.sparse
        return "embedding" if plain else None
    if isinstance(module, nn.LayerNorm):
        return "layernorm" if len(module.normalized_shape) == 1 else None
    named = dict(module.named_parameters(recurse=False))
    if isinstance(module, nn.RMSNorm) or type(module).__name__.endswith("RMSNorm"):
        weight = named.get("weight")
        return "rmsnorm" if set(named) == {"weight"} and weight is not None and weight.dim() == 1 else None
    return None


def parameter_paths(module: nn.Module) -> dict[str, str]:
    """Each trainable parameter's path: the covered module kind(s) that compute it, or `per-domain backward`."""
    paths: dict[int, set[str]] = {}
    names: dict[int, str] = {}
    for mod_name, mod in module.named_modules(remove_duplicate=False):
        kind = _kind(mod)
        for p_name, p in mod.named_parameters(recurse=False):
            names.setdefault(id(p), f"{mod_name}.{p_name}" if mod_name else p_name)
            paths.setdefault(id(p), set()).add(kind or "")
    out = {}
    for p in module.parameters():
        if p.requires_grad:
            kinds = paths.get(id(p), {""})
            out[names[id(p)]] = "per-domain backward" if "" in kinds else "+".join(sorted(kinds))
    return out


class DomainRows:
    """Accumulates per-domain gradient rows into a [R, P] buffer from one forward + backward per micro-batch.

    module: the model (not a DDP wrapper); params: its trainable parameters in row order.
    """

    def __init__(self, module: nn.Module, params: list[torch.Tensor]):
        self.module = module
        self.params = params
        self.offsets: dict[int, int] = {}
        offset = 0
        for p in params:
            self.offsets[id(p)] = offset
            offset += p.numel()
        self.kinds = {m: _kind(m) for m in module.modules() if _kind(m) is not None}
        covered_by: dict[int, bool] = {}
        for _, mod in module.named_modules(remove_duplicate=False):
            for p in mod.parameters(recurse=False):
                covered_by[id(p)] = covered_by.get(id(p), True) and mod in self.kinds
        self.fallback = {id(p) for p in params if not covered_by.get(id(p), False)}
        self.verified = False
        self._step: dict | None = None

    # --- one step: begin, a micro-batch at a time, finish ------------------------------
    def begin(self, grads: torch.Tensor) -> None:
        """Start a step on the rows `grads` [R, P], left unzeroed: the first write of each parameter's row
        overwrites it, `finish` zeroes the rows nothing wrote (zeroing k x P floats every step costs more)."""
        self._grads = grads
        self._written: dict[int, set[int]] = {id(p): set() for p in self.params}

    def finish(self) -> None:
        """Zero every parameter row no micro-batch wrote (a domain absent from this process's samples)."""
        rows = range(len(self._grads))
        for p in self.params:
            off = self.offsets[id(p)]
            for r in set(rows) - self._written[id(p)]:
                self._grads[r, off : off + p.numel()].zero_()
            self._written[id(p)].update(rows)

    def _write_row(self, p, r: int, value: torch.Tensor | None = None, first=None, then=None) -> None:
        """Row r of parameter p: set to `value` / computed by first(row) if unwritten, else += / then(row)."""
        off = self.offsets[id(p)]
        row = self._grads[r, off : off + p.numel()].view(p.shape)
        done = self._written[id(p)]
        if r in done:
            row.add_(value.view(p.shape)) if value is not None else then(row)
        else:
            row.copy_(value.view(p.shape)) if value is not None else first(row)
            done.add(r)

    def _write_block(self, p, value: torch.Tensor) -> None:
        """Every row of parameter p (value [R, n]): set where unwritten, added where written."""
        off = self.offsets[id(p)]
        block = self._grads[:, off : off + p.numel()]
        done = self._written[id(p)]
        if not done:
            block.copy_(value)
        else:
            for r in set(range(len(block))) - done:
                block[r].zero_()
            block.add_(value)
        done.update(range(len(block)))

    # --- one micro-batch ------------------------------------------------------------
    def accumulate(
        self,
        micro_batch: dict,
        group: torch.Tensor,
        rows: list[int],
        grads: torch.Tensor,
        finite: torch.Tensor,
        loss_fn,
        autocast,
        verify: bool,
    ) -> torch.Tensor:
        """Add this micro-batch's per-domain gradient sums into `grads` [R, P] and finite counts into `finite`.

        group: each sample's gradient row group (domain id, or the held-out mixture's id); rows: the
        group of each row. Returns the detached per-sample losses, in the micro-batch's order.
        verify: check the rows against autograd's gradients (only when `grads` held nothing before).
        """
        order = torch.argsort(group, stable=True)
        ids = micro_batch["input_ids"][order]
        sorted_groups = group[order]
        row_of = {d: r for r, d in enumerate(rows)}
        segments = []  # (row, start, end) over the reordered batch
        start = 0
        for d, n in zip(*torch.unique_consecutive(sorted_groups, return_counts=True)):
            segments.append((row_of[int(d)], start, start + int(n)))
            start += int(n)
        sample_rows = torch.tensor([r for r, s, e in segments for _ in range(e - s)], device=ids.device)
        one_hot = F.one_hot(sample_rows, len(rows)).t().to(grads.dtype)  # [R, B]: sample b is in row r
        self._step = {
            "B": len(ids),
            "ids": ids,
            "segments": segments,
            "grads": grads,
            "roots": [],
            "records": [],
            "unsupported": set(),
            "active": False,
            "sample_rows": sample_rows,
            "one_hot": one_hot,
        }
        handles = [m.register_forward_hook(self._on_forward) for m in self.kinds]
        try:
            with autocast or nullcontext():
                logits = self.module(input_ids=ids).logits
        finally:
            for handle in handles:
                handle.remove()
        losses = loss_fn(logits, ids)
        ok = torch.isfinite(losses.detach())
        for r, s, e in segments:
            finite[r] += ok[s:e].sum()
        try:
            if ok.any():
                self._backward(torch.where(ok, losses, 0.0), ok, verify and not self.verified, autocast is not None)
        finally:
            self._step = None
        out = torch.empty_like(losses.detach())
        out[order] = losses.detach()
        return out

    def _backward(self, losses: torch.Tensor, ok: torch.Tensor, verify: bool, autocast: bool) -> None:
        step = self._step
        fallback = [p for p in self.params if id(p) in self.fallback or id(p) in step["unsupported"]]
        covered = [p for p in self.params if id(p) not in self.fallback and id(p) not in step["unsupported"]]
        roots = [y for y, _ in step["roots"]]
        if not roots:  # no embedding seen: ask for every layer output (more memory, same result)
            roots = [output for output, _ in step["records"]]
        inputs = roots + (covered if verify else [])
        step["active"] = True
        try:
            got = (
                torch.autograd.grad(losses.sum(), inputs, allow_unused=True, retain_graph=bool(fallback))
                if inputs
                else ()
            )
        finally:
            step["active"] = False
        for (_y, rec), g in zip(step["roots"], got):
            if g is not None:
                self._add(rec, g)
        if verify:
            self._verify(covered, got[len(roots) :], autocast)
        for i, (r, s, e) in enumerate(step["segments"]):
            if not fallback or not ok[s:e].any():
                continue
            last = all(not ok[s2:e2].any() for _, s2, e2 in step["segments"][i + 1 :])
            parts = torch.autograd.grad(losses[s:e].sum(), fallback, allow_unused=True, retain_graph=not last)
            for p, g in zip(fallback, parts):
                if g is not None:
                    self._write_row(p, r, g.to(step["grads"].dtype))

    def _verify(self, covered: list[torch.Tensor], full: tuple, autocast: bool) -> None:
        """The rows of this (first) micro-batch must sum to autograd's gradient, parameter by parameter."""
        grads = self._step["grads"]
        self.finish()  # rows of domains absent from this micro-batch: zeros, not stale values
        tol = VERIFY_RTOL_AUTOCAST if autocast else VERIFY_RTOL
        wrong = set()
        for p, g in zip(covered, full):
            off = self.offsets[id(p)]
            mine = grads[:, off : off + p.numel()].sum(dim=0).double()
            ref = (
                torch.zeros(p.numel(), dtype=torch.float64, device=mine.device) if g is None else g.reshape(-1).double()
            )
            if not torch.isfinite(ref).all():
                continue  # nothing to compare against
            if (mine - ref).norm() > tol * ref.norm() + 1e-12:
                wrong.add(id(p))
        self.verified = True
        if wrong:
            self.fallback |= wrong
            raise Recompute()

    # --- hooks --------------------------------------------------------------------------
    def _on_forward(self, module, inputs, output):
        step = self._step
        if step is None or not inputs or not isinstance(output, torch.Tensor):
            return None
        kind = self.kinds[module]
        x = inputs[0]
        own = [p for p in module.parameters(recurse=False) if id(p) in self.offsets]
        if not own:
            return None
        B = step["B"]
        replaced = None
        if kind == "embedding" and x.dim() >= 1 and x.shape[0] == 1 and B > 1 and output.shape[0] == 1:
            # broadcast over the batch downstream (a position embedding): expand so each sample's gradient shows
            x = x.expand(B, *x.shape[1:])
            output = replaced = output.expand(B, *output.shape[1:])
        if x.dim() < 1 or x.shape[0] != B or output.shape[0] != B or not output.requires_grad:
            step["unsupported"].update(id(p) for p in own)
            return replaced
        rec = {"module": module, "kind": kind, "input": x.detach()}  # not the output: its hook holds rec
        step["records"].append((output, rec))
        if kind == "embedding":
            step["roots"].append((output, rec))
        else:
            output.register_hook(functools.partial(self._on_grad, rec))
        return replaced

    def _on_grad(self, rec: dict, g: torch.Tensor):
        if self._step is not None and self._step["active"]:
            self._add(rec, g)

    def _add(self, rec: dict, g: torch.Tensor) -> None:
        """Add each domain's part of this layer call's parameter gradient into its row.

        Weights of linear layers: one matmul per domain over its tokens (the weight gradient's FLOPs
        in all). Everything else: one operation for all domains at once (per-sample sums, then a
        [R, B] one-hot matmul, or one index_add), added into the [R, n] column block of the rows:
        few large operations rather than many small ones.
        """
        step = self._step
        module, kind, a = rec["module"], rec["kind"], rec["input"]
        if any(id(p) in step["unsupported"] or id(p) in self.fallback for p in module.parameters(recurse=False)):
            return  # those parameters take the per-domain backward
        one_hot, dtype = step["one_hot"], step["grads"].dtype
        B = step["B"]

        weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
        has_weight = isinstance(weight, torch.Tensor) and id(weight) in self.offsets  # frozen: no row
        has_bias = isinstance(bias, torch.Tensor) and id(bias) in self.offsets
        g = g.to(dtype)
        if has_bias:
            self._write_block(bias, one_hot @ g.reshape(B, -1, g.shape[-1]).sum(dim=1))
        if not has_weight:
            return
        if kind in ("linear", "conv1d"):
            for r, s, e in step["segments"]:
                gs, xs = g[s:e].reshape(-1, g.shape[-1]), a[s:e].reshape(-1, a.shape[-1]).to(dtype)
                left, right = (gs.t(), xs) if kind == "linear" else (xs.t(), gs)
                self._write_row(
                    weight,
                    r,
                    first=lambda row, x=left, y=right: torch.mm(x, y, out=row),
                    then=lambda row, x=left, y=right: row.addmm_(x, y),
                )
        elif kind == "embedding":
            vocab = weight.shape[0]
            idx = (step["sample_rows"].view(-1, *([1] * (a.dim() - 1))) * vocab + a).reshape(-1)
            flat = g.reshape(-1, g.shape[-1])
            if module.padding_idx is not None:  # autograd gives the padding row no gradient
                keep = a.reshape(-1) != module.padding_idx
                idx, flat = idx[keep], flat[keep]
            summed = torch.zeros(len(one_hot) * vocab, flat.shape[-1], dtype=dtype, device=flat.device)
            self._write_block(weight, summed.index_add_(0, idx, flat).view(len(one_hot), -1))
        else:
            with torch.no_grad():
                if kind == "layernorm":
                    normed = F.layer_norm(a, module.normalized_shape, None, None, module.eps)
                else:
                    normed = torch.func.functional_call(module, {"weight": torch.ones_like(weight)}, (a,))
            self._write_block(weight, one_hot @ (g * normed.to(dtype)).reshape(B, -1, g.shape[-1]).sum(dim=1))
