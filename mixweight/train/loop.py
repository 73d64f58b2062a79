"""The training loop: read top to bottom, one optimizer step per iteration.

build (corpus, model, optimizer, data) -> resume? -> for each step:
    micro-batches -> per-sample losses -> sample weights -> backward -> clip -> step
    log / evaluate per domain / checkpoint
-> final evaluation (eval.json) and checkpoint
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from tqdm.auto import tqdm

from mixweight.core.allocator import keep_freed_memory
from mixweight.core.distributed import World, barrier, broadcast_object, close_world, init_world
from mixweight.core.jsonio import write_json_atomic
from mixweight.core.model import build_config, build_model, count_parameters, load_spec
from mixweight.core.tracking import open_trackers
from mixweight.data.corpus import open_corpus
from mixweight.data.manifest import check_hashes
from mixweight.errors import MixweightError, first_line
from mixweight.sampling.mixture import DomainMixture
from mixweight.sampling.repetition import cap_phases, write_repetition
from mixweight.train import checkpoint as ckpt
from mixweight.train import rundir
from mixweight.train.compute import COMPUTE_KEY, run_compute
from mixweight.train.config import TrainConfig
from mixweight.train.metrics import MetricsLog
from mixweight.train.mixers import Mixer
from mixweight.train.objective import StepObjective, WeightedLoss
from mixweight.train.online import ARTIFACT_NAME, build_mixer, resolve_phases
from mixweight.train.optim import build_optimizer, build_scheduler
from mixweight.train.parallel import full_model_state, full_optimizer_state, grad_norm_value, wrap_model
from mixweight.train.rundir import RESUMABLE_CHANGES, config_changes  # noqa: F401 - used by DoReMi's reuse check
from mixweight.train.step import StepResult
from mixweight.train.validation import evaluate_domains, load_validation, without_blocks
from mixweight.weighting import weight_stats

# Bins of N * w for the sample-weight histogram; the last bin catches everything above 4x uniform.
HISTOGRAM_EDGES = np.array([0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, np.inf])


def autocast_context(precision: str, device: torch.device):
    """bf16 autocast (on a GPU, or on the CPU with precision bf16), else None. Matmuls run in bf16; the
    logits are cast to fp32 before log-softmax (core/loss.py, core/chunked_loss.py), so per-sample
    losses, their sums and the sample weights are fp32 whatever the precision."""
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else None


def _device(world: World) -> torch.device:
    return torch.device(f"cuda:{world.local_rank}") if torch.cuda.is_available() else torch.device("cpu")


def _claim_run_dir(config: TrainConfig, inputs: dict, lock: rundir.RunLock) -> Path | None:
    """Main process: check --out, take its lock, and check it against the run it holds; writes nothing
    but the lock file (removed again when a check refuses). Returns the checkpoint to resume from, if any."""
    run_dir = Path(config.out)
    rundir.check_out_dir(run_dir, config)
    try:
        lock.acquire()  # makes the run directory
    except OSError as exc:
        raise MixweightError(f"--out {run_dir}: cannot create the run directory ({exc.strerror or exc})") from exc
    try:
        latest = ckpt.latest_checkpoint(run_dir)
        if latest is not None and not config.resume:
            raise MixweightError(
                f"{run_dir}: already holds checkpoints; pass --resume to continue it, or choose a new --out"
            )
        if latest is not None:
            details = rundir.config_changes(run_dir, config, inputs)
            if details:
                raise MixweightError(f"{run_dir}: cannot resume with a different config ({details}); use a new --out")
            step = ckpt.read_resume_state(latest)["step"]
            if config.steps < step:  # it would write an eval.json labelled --steps holding the later model
                raise MixweightError(
                    f"{run_dir}: its newest checkpoint is at step {step}, past --steps {config.steps}; a run cannot "
                    f"go back: pass --steps {step} or more (`mixweight eval {run_dir} --checkpoint step-N` "
                    "evaluates an earlier checkpoint)"
                )
            MetricsLog(run_dir / "metrics.jsonl", enabled=True).check()
    except BaseException:
        lock.release()
        raise
    return latest


def _prepare_run_dir(config: TrainConfig, world: World, inputs: dict, lock: rundir.RunLock) -> Path | None:
    """The main process decides and every process learns the outcome (a refusal must stop all of them)."""
    outcome = None
    if world.is_main:
        try:
            latest = _claim_run_dir(config, inputs, lock)
            outcome = ("resume", None if latest is None else str(latest))
        except MixweightError as exc:
            outcome = ("error", str(exc))
        except OSError as exc:  # an unreadable or read-only --out: every process must stop, in one line
            outcome = ("error", f"--out {config.out}: {first_line(exc)}")
    outcome = broadcast_object(outcome, world)
    if outcome[0] == "error":
        raise MixweightError(outcome[1])
    return None if outcome[1] is None else Path(outcome[1])


def _record_run(config: TrainConfig, inputs: dict, metrics: MetricsLog, start_step: int) -> None:
    """Main process, once every check and load has passed: the run's files, its metrics made consistent,
    and the trackers that mirror them opened (continuing the tracker runs of a resumed run)."""
    run_dir = Path(config.out)
    rundir.write_run_files(run_dir, config, inputs)
    if start_step == 0:
        dropped = metrics.start_afresh()
        if dropped:
            print(
                f"mixweight train: {run_dir}: no checkpoint to resume from; starting at step 0 and replacing "
                f"metrics.jsonl ({dropped} records of an earlier start)",
                flush=True,
            )
    else:
        note = metrics.truncate_after(start_step)
        if note:
            print(f"mixweight train: {note}", flush=True)
    metrics.mirror = open_trackers(config, run_dir, start_step)


def _load_model_weights(model, checkpoint: Path) -> None:
    files = sorted((checkpoint / "model").glob("*.safetensors"))
    if not files:
        raise MixweightError(f"checkpoint {checkpoint}: no model weights (model/*.safetensors)")
    state = {}
    for file in files:
        try:
            state.update(load_file(str(file)))
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error type for a damaged file
            raise MixweightError(
                f"checkpoint {checkpoint}: {file.name} cannot be read ({first_line(exc)}); it is truncated or "
                "corrupted: move this checkpoint aside to resume from the previous one"
            ) from exc
    expected = model.state_dict()
    mismatched = [k for k, v in state.items() if k in expected and expected[k].shape != v.shape]
    missing = [k for k in expected if k not in state and not _is_tied(model, k)]
    if mismatched or missing or any(k not in expected for k in state):
        raise MixweightError(
            f"checkpoint {checkpoint}: its weights do not fit --model (shape mismatches: {mismatched[:3]}, "
            f"missing: {missing[:3]}); it was written by a run with another model spec"
        )
    model.load_state_dict(state, strict=False)


def _is_tied(model, key: str) -> bool:
    """save_pretrained drops the output embedding when it is tied to the input embedding."""
    return bool(getattr(model.config, "tie_word_embeddings", False)) and key.endswith("lm_head.weight")


def _step_record(
    step: int,
    result: StepResult,
    lr: float,
    grad_norm: float,
    tokens: int,
    tokens_per_s: float,
    skipped: int,
    domains: list[str],
    histogram: bool,
) -> dict:
    n = len(result.losses)
    scaled = result.weights * n  # N * w: 1 for every sample under the plain mean
    per_domain = {}
    for index, name in enumerate(domains):
        mask = (result.domains == index) & torch.isfinite(result.losses)
        if mask.any():
            per_domain[name] = {
                "loss": result.losses[mask].mean().item(),
                "share": mask.float().mean().item(),
                "weight_x_n": scaled[mask].mean().item(),
            }
    record = {
        "step": step,
        "loss": result.mean_loss,
        "weighted_loss": result.weighted_loss,  # sum_i w_i l_i (metrics of before 0.2 call it "objective")
        "lr": lr,
        "grad_norm": grad_norm,
        "tokens": tokens,
        "nonfinite_samples": n - result.n_finite,
        "skipped_steps": skipped,
        "weights": weight_stats(result.weights),
        "domains": per_domain,
        "time": {"tokens_per_s": tokens_per_s},
    }
    if histogram:
        counts, edges = np.histogram(scaled.numpy(), bins=HISTOGRAM_EDGES)
        record["weights"]["histogram_x_n"] = {"edges": edges.tolist(), "counts": counts.tolist()}
    return record


class NonFiniteStreak:
    """Consecutive skipped steps; too many means the run has diverged, and it stops with the facts."""

    def __init__(self, limit: int, domains: list[str]):
        self.limit, self.domains = limit, domains
        self.first_step, self.count, self.bad_domains = None, 0, set()

    def reset(self) -> None:
        self.first_step, self.count, self.bad_domains = None, 0, set()

    def record(self, step: int, result: StepResult) -> None:
        self.first_step = step if self.first_step is None else self.first_step
        self.count += 1
        bad = result.domains[~torch.isfinite(result.losses)].unique().tolist()
        self.bad_domains.update(self.domains[i] for i in bad)
        if self.count >= self.limit:
            where = sorted(self.bad_domains) or "none (the losses were finite, the gradient was not)"
            raise MixweightError(
                f"steps {self.first_step + 1}-{step + 1}: {self.count} consecutive steps had non-finite losses or "
                f"gradients and were skipped; domains with non-finite losses: {where}. The run has diverged: lower "
                "--lr, raise --warmup-steps or check the data; --resume continues from the last checkpoint"
            )


def train(config: TrainConfig, objective: StepObjective | None = None) -> dict:
    """Run (or resume) a training run; returns the final evaluation.

    `objective` (a StepObjective, mixweight/train/objective.py) makes each step's gradients; by
    default the weighted loss of the config's sample weighting (the plain mean when none).
    """
    keep_freed_memory()  # each step's activations reuse the last step's memory instead of page-faulting anew
    world = init_world()
    lock = rundir.RunLock(config.out)  # held by the main process from the checks to the end of the run
    try:
        return _train(config, objective, world, lock)
    finally:
        lock.release()
        close_world(world)


def _objective(config: TrainConfig, objective: StepObjective | None, mixer: Mixer) -> StepObjective:
    """The step objective: the caller's, or the config's weighted loss carrying the mixer's probe (online DoReMi's
    excess signal), which a caller's own objective (a weights method's proxy) cannot carry."""
    if objective is None:
        return WeightedLoss.from_config(config, probe=mixer.probe)
    if mixer.probe is not None:
        raise MixweightError(f"train: {config.domain_weights} needs the default step objective (per-sample losses)")
    return objective


def _train(config: TrainConfig, objective: StepObjective | None, world: World, lock: rundir.RunLock) -> dict:
    # Every input is checked before anything is written into --out.
    opened = open_corpus(config.data, world.is_main)
    corpus, manifest = opened.directory, opened.manifest
    check_hashes(corpus, manifest)  # shard bytes edited in place since the corpus was written (where cheap)
    phases = resolve_phases(manifest, config)  # a static schedule, or online mixing's prior as phase 0
    build_config(config.model, manifest)
    run_tokens = config.steps * config.batch_size * world.size * config.grad_accum * manifest.seq_len
    phases, repetition = cap_phases(phases, manifest, config.max_epochs, config.steps, run_tokens)  # --max-epochs
    mixer = build_mixer(config, opened, phases)  # static, or online (online DoReMi: its reference, checked)
    objective = _objective(config, objective, mixer)
    inputs = rundir.input_hashes(config, corpus, manifest, phases, load_spec(config.model))
    resume_from = _prepare_run_dir(config, world, inputs, lock)
    run_dir = Path(config.out)
    device = _device(world)
    autocast = autocast_context(config.precision, device)

    model = build_model(config.model, manifest, config.seed).to(device)
    if resume_from is not None:
        _load_model_weights(model, resume_from)
    hf_model = model
    model = wrap_model(model, world, config.fsdp, config.compile)
    optimizer = build_optimizer(model, config)  # after wrapping: FSDP replaces the parameters
    scheduler = build_scheduler(optimizer, config)
    global_micro = config.batch_size * world.size
    epoch_size = max(sum(s.blocks for s in manifest.splits["train"].values()) // global_micro, 1) * global_micro
    loader = DomainMixture(corpus, manifest, phases, epoch_size, config.batch_size, config.seed, world, config.batching)
    metrics = MetricsLog(run_dir / "metrics.jsonl", enabled=world.is_main)
    try:
        start_step, skipped = 0, 0
        if resume_from is not None:
            state = ckpt.read_resume_state(resume_from)
            ckpt.load_trainer_state(resume_from, model, optimizer, scheduler)
            try:
                for phase in mixer.resume(state, len(loader.phases)):  # first: the loader's phase may be one
                    loader.append_phase(phase)
                loader.load_state_dict(state["loader"])
                objective.load_state_dict(state.get("objective", {}))
            except MixweightError as exc:  # a state this version refuses by name (an earlier online-mixing rule)
                raise MixweightError(f"checkpoint {resume_from}: {exc}") from exc
            except (KeyError, ValueError, TypeError, IndexError) as exc:
                raise MixweightError(
                    f"checkpoint {resume_from}: state.json holds a bad loader or objective state ({first_line(exc)}); "
                    "it is damaged or not a mixweight checkpoint"
                ) from exc
            start_step, skipped = state["step"], state.get("skipped_steps", 0)
        if world.is_main:
            lock.keep()  # the run writes from here on: a later failure leaves a run to resume, lock file and all
            _record_run(config, inputs, metrics, start_step)
            write_repetition(run_dir, repetition)  # RUN/repetition.json: planned epochs, what the cap moved

        val_sets = load_validation(corpus, manifest, config.eval_blocks)
        tokens_per_step = global_micro * config.grad_accum * manifest.seq_len

        def evaluate(step: int, blocks: bool = False) -> dict:
            summary = evaluate_domains(
                model,
                val_sets,
                config.eval_batch_size,
                world,
                manifest.irreducible_loss,
                autocast,
                config.loss_impl,
                blocks,
            )
            metrics.write({"step": step, "eval": without_blocks(summary)})
            return summary

        def save(step: int) -> None:
            state = {"loader": loader.state_dict(), "skipped_steps": skipped, "objective": objective.state_dict()}
            state.update(mixer.checkpoint_state())
            model_state, optimizer_state = full_model_state(model), full_optimizer_state(model, optimizer)
            if world.is_main:
                ckpt.save_checkpoint(
                    run_dir, step, hf_model, model_state, optimizer_state, scheduler, state, config.keep_checkpoints
                )
                mixer.write_artifact(run_dir / ARTIFACT_NAME, manifest, config.seed, config.steps)  # online: so far
            barrier(world)

        if world.is_main:
            print(
                f"mixweight train: {count_parameters(model) / 1e6:.2f}M parameters, {len(manifest.domains)} domains, "
                f"{tokens_per_step} tokens/step, steps {start_step}->{config.steps}",
                flush=True,
            )
        bar = tqdm(
            total=config.steps,
            initial=start_step,
            disable=not (world.is_main and config.progress) or None,
            desc="train",
            unit="step",
            dynamic_ncols=True,
        )
        streak = NonFiniteStreak(config.max_nonfinite_steps, manifest.domains)
        model.train()
        for step in range(start_step, config.steps):
            started = time.perf_counter()
            new_phase = mixer.phase_due(step)
            if new_phase:  # every K steps the online mixture starts a phase (after a resume too: from its state)
                loader.append_phase(mixer.start_phase(step))
            micro_batches = [loader.next_batch(step) for _ in range(config.grad_accum)]
            lr = scheduler.get_last_lr()[0]
            result = objective.compute_gradients(model, micro_batches, step, world, autocast, lr)
            mixer.observe(step, result, micro_batches)
            clip = config.grad_clip if config.grad_clip > 0 else float("inf")
            grad_norm = grad_norm_value(torch.nn.utils.clip_grad_norm_(model.parameters(), clip))
            if result.n_finite == 0 or not math.isfinite(grad_norm):
                skipped += 1  # a non-finite gradient is never applied
                streak.record(step, result)
            else:
                optimizer.step()
                streak.reset()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            done = step + 1
            tokens_per_s = tokens_per_step / max(time.perf_counter() - started, 1e-9)
            bar.update(1)
            bar.set_postfix(loss=f"{result.mean_loss:.3f}", tok_s=f"{tokens_per_s:,.0f}")
            histogram = done % config.sample_weighting.histogram_every == 0
            if done % config.log_every == 0 or done == config.steps or histogram or new_phase:
                record = _step_record(
                    done,
                    result,
                    lr,
                    grad_norm,
                    done * tokens_per_step,
                    tokens_per_s,
                    skipped,
                    manifest.domains,
                    histogram,
                )
                record["mixture"] = loader.mixture()  # cumulative achieved vs target share, this phase
                record.update(mixer.step_metrics())  # online: the phase's weights and the method's signal
                metrics.write({**record, **objective.step_metrics()})
            if config.eval_every and done % config.eval_every == 0 and done != config.steps:
                evaluate(done)
            if done % config.checkpoint_every == 0 and done != config.steps:
                save(done)
        bar.close()

        final = evaluate(config.steps, blocks=True)  # eval.json keeps every validation block's loss
        save(config.steps)
        if world.is_main:
            steps, accum = config.steps, config.grad_accum
            compute = run_compute(hf_model, manifest.seq_len, tokens_per_step, accum, steps, objective)
            write_json_atomic(run_dir / "eval.json", {"step": config.steps, **final, COMPUTE_KEY: compute})
        return final
    finally:
        metrics.close()
        loader.close()
