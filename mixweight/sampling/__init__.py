"""mixweight.sampling: the streaming domain mixture the trainer draws from.

- `schedule`: `--domain-weights` (natural | uniform | weights file | schedule file | trajectory) -> phases.
- `loader`: `MixtureLoader`, one mosaicml-streaming dataset with one `Stream` per domain (one phase).
- `mixture`: `DomainMixture`, the phase-aware loader: `next_batch(step)`, achieved mixture, state.
- `shm`: removing the shared memory a crashed run left behind, without touching live jobs.
"""
