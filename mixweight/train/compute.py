"""A run's training compute: the `compute` record of eval.json (docs/algorithms.md section 7).

    flops_per_step = forward+backward of the model on the step's tokens   (core/flops.py)
                   + the step's extra work, as the step objective declares it (`extra_flops`):
                       whole_step_forward   sample weights over several micro-batches (sample_weighting.scope step):
                                            one more no-grad forward of the model
                       reference_forward    DoReMi's proxy and online DoReMi: one no-grad forward of the reference
                       domain_gradients     DoGE: the rows' inner products and the mixed gradient
    flops          = steps x flops_per_step

An objective without `extra_flops` adds nothing. Evaluation forwards are not training compute and
are not counted (they are the same for every arm of a comparison).
"""

from __future__ import annotations

import torch

from mixweight.core.flops import FORMULA, ModelShape, forward_flops, model_shape, training_flops

COMPUTE_KEY = "compute"  # eval.json's field


def reference_forward(reference: torch.nn.Module, shape: ModelShape, tokens: int) -> dict[str, float]:
    """The extra work of a no-grad reference forward over every token of the step (DoReMi, online DoReMi)."""
    return {"reference_forward": forward_flops(model_shape(reference, shape.seq_len), tokens)}


def run_compute(model: torch.nn.Module, seq_len: int, step_tokens: int, micro_batches: int, steps: int, objective):
    """The compute record of a run of `steps` optimizer steps of `step_tokens` tokens (all processes) in
    `micro_batches` micro-batches per process, whose step is `objective`."""
    shape = model_shape(model, seq_len)
    main = training_flops(shape, step_tokens)
    declared = getattr(objective, "extra_flops", None)
    extra = dict(declared(model, shape, step_tokens, micro_batches)) if declared is not None else {}
    per_step = main + sum(extra.values())
    return {
        "formula": FORMULA,
        "model": shape.to_json(),
        "tokens_per_step": int(step_tokens),
        "steps": int(steps),
        "model_flops_per_step": main,
        "extra_flops_per_step": extra,
        "flops_per_step": per_step,
        "flops": per_step * steps,
    }
