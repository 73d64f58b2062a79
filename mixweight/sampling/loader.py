"""The training data of one mixture phase: one mosaicml-streaming `Stream` per domain.

`MixtureLoader` yields micro-batches ``{"input_ids": [B, L], "domain": [B]}`` for this
process. Its state (epoch, samples consumed in the epoch) goes into every checkpoint;
mosaicml-streaming's deterministic shuffle turns that state back into exactly the
sample sequence an uninterrupted run would have seen, also across epoch boundaries.

Proportions are fixed when the dataset is built (mosaicml-streaming picks
``round(epoch_size * proportion)`` samples per stream per epoch, then shuffles them
together); `mixweight.sampling.mixture` rebuilds one of these per schedule phase.

A domain with weight 0 is never sampled: its stream is left out (mosaicml-streaming
does not take a proportion of 0). Domain ids stay right because every sample carries
its own ``domain`` field, written by `mixweight.data.streams`.
"""

from __future__ import annotations

import numpy as np
import torch
from streaming import Stream, StreamingDataset
from streaming.base.shared.memory import SharedMemory
from torch.utils.data import DataLoader

from mixweight.core.distributed import World, barrier
from mixweight.data.manifest import Manifest
from mixweight.data.remote import join, remote_of, streaming_path
from mixweight.errors import MixweightError, first_line
from mixweight.sampling.shm import remove_filelocks, untrack_shared_memory

# mixweight name -> mosaicml-streaming `batching_method`. 'stratified' is refused (see below).
BATCHING_METHODS = {"random": "random", "per_stream": "per_stream"}
STRATIFIED_REFUSAL = (
    "batching 'stratified' is not supported: mosaicml-streaming's stratified batching gives every "
    "batch floor(batch_size * proportion) samples of each stream and drops the samples of a stream "
    "that do not fill a whole batch share, so small domains lose samples and the achieved mixture "
    "drifts from the domain weights without any warning; use 'random' (the default, exact per-epoch "
    "counts shuffled together) or 'per_stream' (each batch from one domain)"
)


def check_batching(batching: str) -> str:
    """The mosaicml-streaming batching method for a mixweight `batching` name."""
    if batching == "stratified":
        raise MixweightError(STRATIFIED_REFUSAL)
    if batching not in BATCHING_METHODS:
        raise MixweightError(f"batching {batching!r}: expected one of {', '.join(BATCHING_METHODS)}")
    return BATCHING_METHODS[batching]


def _collate(samples: list[dict]) -> dict[str, torch.Tensor]:
    tokens = np.stack([np.asarray(s["tokens"]) for s in samples]).astype(np.int64)
    domains = np.asarray([int(s["domain"]) for s in samples], dtype=np.int64)
    return {"input_ids": torch.from_numpy(tokens), "domain": torch.from_numpy(domains)}


class MixtureLoader:
    def __init__(
        self,
        corpus_dir,
        manifest: Manifest,
        proportions: dict[str, float],
        samples_per_epoch: int,
        micro_batch_size: int,
        seed: int,
        world: World,
        batching: str = "random",
    ):
        self.micro_batch_size = micro_batch_size
        self.world = world
        self.corpus_dir = corpus_dir
        self.samples_per_epoch = samples_per_epoch
        sampled = [d for d in manifest.domains if proportions[d] > 0]
        if not sampled:
            raise MixweightError(f"domain weights {proportions}: every weight is 0, nothing to sample")
        untrack_shared_memory()  # mixweight removes streaming's segments itself (sampling/shm.py)
        remote = remote_of(corpus_dir)  # a cache copy of a remote corpus: streaming fetches its shards
        streams = [
            Stream(
                local=str(manifest.stream_dir(corpus_dir, "train", d)),
                proportion=proportions[d],
                remote=None if remote is None else streaming_path(join(remote, manifest.splits["train"][d].path)),
            )
            for d in sampled
        ]
        self.dataset = StreamingDataset(
            streams=streams,
            epoch_size=samples_per_epoch,
            shuffle=True,
            shuffle_seed=seed,
            batch_size=micro_batch_size,
            # One canonical node regardless of the process count keeps the global sample order
            # the same for 1 and N processes (what makes N ranks equal one rank).
            num_canonical_nodes=1,
            replication=None,
            batching_method=check_batching(batching),
        )
        self.epoch = 0
        self.sample_in_epoch = 0  # global samples (all ranks) consumed in the current epoch
        self._iterator = None

    def close(self) -> None:
        """Release the dataset's shared-memory segments now.

        mosaicml-streaming unlinks them only at interpreter exit, so a process that builds
        several datasets (a pipeline, a test suite) would otherwise accumulate them.
        """
        self._iterator = None
        threads = getattr(self.dataset, "_iterator", None)
        if threads is not None:
            threads.exit()  # its download/ready threads still touch the shared memory
        barrier(self.world)  # no process may unlink segments a peer still uses
        for segment in _shared_memory_of(self.dataset):
            segment.cleanup()
        if self.world.local_rank == 0:
            remove_filelocks(self.dataset._shm_prefix_int)
        # Every process sees the segments gone before any builds the next dataset (a schedule's next phase):
        # streaming picks the first free prefix on each process, and a peer still unlinking would make two differ.
        barrier(self.world)

    def _loader(self):
        return iter(DataLoader(self.dataset, batch_size=self.micro_batch_size, num_workers=0, collate_fn=_collate))

    def next_batch(self) -> dict[str, torch.Tensor]:
        try:
            batch = self._next()
        except MixweightError:
            raise
        except Exception as exc:  # noqa: BLE001 - streaming's reader fails in many ways on a damaged shard
            remote = remote_of(self.corpus_dir)
            where = (
                f"the corpus {remote} (its local cache copy is {self.corpus_dir}; delete it to fetch the shards again)"
                if remote is not None
                else f"the corpus {self.corpus_dir}"
            )
            raise MixweightError(
                f"reading the training data failed ({type(exc).__name__}: {first_line(exc)}): a training shard of "
                f"{where} is truncated or damaged; repair or re-create the corpus, then rerun with --resume"
            ) from exc
        self.sample_in_epoch += self.micro_batch_size * self.world.size
        return batch

    def _next(self) -> dict[str, torch.Tensor]:
        if self._iterator is None:
            self._iterator = self._loader()
        try:
            return next(self._iterator)
        except StopIteration:
            self.epoch += 1
            self.sample_in_epoch = 0
            self._iterator = self._loader()
            return next(self._iterator)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "sample_in_epoch": self.sample_in_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        self.sample_in_epoch = int(state["sample_in_epoch"])
        self.dataset.load_state_dict(
            {
                "epoch": self.epoch,
                "sample_in_epoch": self.sample_in_epoch,
                "num_canonical_nodes": 1,
                "shuffle_seed": self.dataset.shuffle_seed,
                "initial_physical_nodes": None,
            }
        )
        self._iterator = None


def _shared_memory_of(obj, depth: int = 2):
    """The streaming SharedMemory objects held by `obj` or by its attributes (arrays, barriers)."""
    found = []
    for value in vars(obj).values():
        if isinstance(value, SharedMemory):
            found.append(value)
        elif depth > 0 and hasattr(value, "__dict__") and type(value).__module__.startswith("streaming"):
            found.extend(_shared_memory_of(value, depth - 1))
    return found
