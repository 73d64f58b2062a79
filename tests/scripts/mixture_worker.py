"""Run under torchrun by tests/test_sampling.py: each rank draws from the domain mixture and
writes what it saw (domain ids and block hashes) plus the all-reduced mixture to OUT/rank-R.json.

usage: mixture_worker.py CORPUS WEIGHTS EPOCH_SIZE BATCH STEPS OUT
"""

import hashlib
import json
import sys
from pathlib import Path

from mixweight.core.distributed import close_world, init_world
from mixweight.data.manifest import load_manifest
from mixweight.sampling.mixture import DomainMixture
from mixweight.sampling.schedule import resolve_schedule


def main() -> None:
    corpus, weights, epoch_size, batch, steps, out = sys.argv[1:7]
    world = init_world()
    manifest = load_manifest(corpus)
    mixture = DomainMixture(
        corpus, manifest, resolve_schedule(manifest, weights), int(epoch_size), int(batch), seed=3, world=world
    )
    seen = []
    try:
        for step in range(int(steps)):
            b = mixture.next_batch(step)
            for tokens, domain in zip(b["input_ids"], b["domain"]):
                seen.append([int(domain), hashlib.sha1(tokens.numpy().tobytes()).hexdigest()[:16]])
        summary = mixture.mixture()
    finally:
        mixture.close()
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / f"rank-{world.rank}.json").write_text(json.dumps({"seen": seen, "mixture": summary}))
    close_world(world)


if __name__ == "__main__":
    main()
