"""The phase-aware domain mixture the trainer draws its micro-batches from.

mosaicml-streaming fixes a dataset's proportions when it is built, so a schedule of domain
weights (`mixweight.sampling.schedule`) is followed by building one `MixtureLoader` per
phase: when a step enters a new phase the old dataset is closed (its shared memory
released) and a new one is built with shuffle seed ``seed + phase index``, starting at its
epoch 0. The state ``(phase, epoch, sample_in_epoch)`` therefore pins down the exact
sample sequence, so resuming is exact within an epoch, across epochs and across phases.

It also counts the samples drawn per domain in the current phase (over all ranks) and
reports that achieved mixture next to the target weights.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from mixweight.core.distributed import World, all_reduce_sum, barrier
from mixweight.data.manifest import Manifest
from mixweight.sampling.loader import MixtureLoader, check_batching
from mixweight.sampling.schedule import Phase, phase_at
from mixweight.sampling.shm import clean_stale_shared_memory


class DomainMixture:
    """Micro-batches ``{"input_ids": [B, L], "domain": [B]}`` for training step `step`."""

    def __init__(
        self,
        corpus_dir,
        manifest: Manifest,
        phases: list[Phase],
        samples_per_epoch: int,
        micro_batch_size: int,
        seed: int,
        world: World,
        batching: str = "random",
    ):
        check_batching(batching)
        self.corpus_dir, self.manifest, self.phases = corpus_dir, manifest, phases
        self.samples_per_epoch, self.micro_batch_size = samples_per_epoch, micro_batch_size
        self.seed, self.world, self.batching = seed, world, batching
        self.phase, self._resume_at = 0, (0, 0)  # (epoch, sample_in_epoch) to enter the phase at
        self._loader: MixtureLoader | None = None
        n = len(manifest.domains)
        self._counts_before = np.zeros(n, dtype=np.int64)  # global counts in this phase up to the last resume
        self._local_counts = np.zeros(n, dtype=np.int64)  # this rank's counts since then
        if world.local_rank == 0:
            streams = [str(manifest.stream_dir(corpus_dir, "train", d)) for d in manifest.domains]
            removed = clean_stale_shared_memory(streams)
            if removed:
                print(
                    f"mixweight: removed {len(removed)} stale shared-memory segments of a crashed run over "
                    f"this corpus: {', '.join(removed[:4])}{' ...' if len(removed) > 4 else ''}",
                    file=sys.stderr,
                )
        barrier(world)

    # --- batches -----------------------------------------------------------------------
    def next_batch(self, step: int) -> dict[str, torch.Tensor]:
        target = phase_at(self.phases, step)
        if target != self.phase:
            self._enter(target, 0, 0)
        elif self._loader is None:
            self._enter(target, *self._resume_at)
        batch = self._loader.next_batch()
        self._local_counts += np.bincount(batch["domain"].numpy(), minlength=len(self._local_counts))
        return batch

    def append_phase(self, phase: Phase) -> None:
        """A phase decided during the run (online mixing): it starts after every phase so far. A resumed
        run appends the phases its checkpoint recorded before `load_state_dict`, so they are rebuilt alike."""
        if phase.start_step <= self.phases[-1].start_step:
            raise ValueError(
                f"phase starting at step {phase.start_step} does not come after the last one "
                f"({self.phases[-1].start_step})"
            )
        self.phases = [*self.phases, phase]

    def _enter(self, phase: int, epoch: int, sample_in_epoch: int) -> None:
        if phase != self.phase:
            self._counts_before[:] = 0
            self._local_counts[:] = 0
        self.close()
        self.phase = phase
        self._loader = MixtureLoader(
            self.corpus_dir,
            self.manifest,
            self.phases[phase].weights,
            self.samples_per_epoch,
            self.micro_batch_size,
            self.seed + phase,
            self.world,
            self.batching,
        )
        if epoch or sample_in_epoch:
            self._loader.load_state_dict({"epoch": epoch, "sample_in_epoch": sample_in_epoch})

    def close(self) -> None:
        """Release the current phase's dataset (its shared memory); collective across ranks."""
        if self._loader is not None:
            self._resume_at = (self._loader.epoch, self._loader.sample_in_epoch)
            self._loader.close()
            self._loader = None

    # --- achieved mixture ----------------------------------------------------------------
    def domain_counts(self) -> np.ndarray:
        """Samples drawn per domain in the current phase, over all ranks (collective)."""
        local = torch.from_numpy(self._local_counts.copy())
        return self._counts_before + all_reduce_sum(local, self.world).numpy()

    def mixture(self) -> dict:
        """``{"phase": i, "domains": {domain: {"target", "achieved", "samples"}}}`` (collective)."""
        counts = self.domain_counts()
        total = max(int(counts.sum()), 1)
        target = self.phases[self.phase].weights
        return {
            "phase": self.phase,
            "domains": {
                d: {"target": target[d], "achieved": int(c) / total, "samples": int(c)}
                for d, c in zip(self.manifest.domains, counts)
            },
        }

    # --- checkpoint state ----------------------------------------------------------------
    def state_dict(self) -> dict:
        """Collective (sums the domain counts over ranks); every rank gets the same state."""
        epoch, sample_in_epoch = (
            (self._loader.epoch, self._loader.sample_in_epoch) if self._loader is not None else self._resume_at
        )
        return {
            "phase": self.phase,
            "epoch": epoch,
            "sample_in_epoch": sample_in_epoch,
            "domain_counts": self.domain_counts().tolist(),
        }

    def load_state_dict(self, state: dict) -> None:
        phase = int(state.get("phase", 0))  # checkpoints from before schedules have no phase
        if not 0 <= phase < len(self.phases):
            raise ValueError(f"loader state phase {phase} is outside the schedule's {len(self.phases)} phases")
        self.close()
        self.phase = phase
        self._resume_at = (int(state["epoch"]), int(state["sample_in_epoch"]))
        counts = state.get("domain_counts")
        self._counts_before = (
            np.asarray(counts, dtype=np.int64)
            if counts is not None
            else np.zeros(len(self.manifest.domains), dtype=np.int64)
        )
        self._local_counts[:] = 0
