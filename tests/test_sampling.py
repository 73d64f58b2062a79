"""The domain mixture: achieved vs target shares, exact resume, ranks, shared memory, schedules."""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

import mixweight.train.loop as loop
from mixweight.core.distributed import World
from mixweight.data.manifest import load_manifest
from mixweight.data.synthetic import write_synthetic_corpus
from mixweight.errors import MixweightError
from mixweight.sampling.mixture import DomainMixture
from mixweight.sampling.schedule import phase_at, resolve_schedule
from mixweight.sampling.shm import SHM_DIR, clean_stale_shared_memory, registered_locals, streaming_segments

REPO = Path(__file__).resolve().parents[1]
SKEWED = [0.7, 0.2, 0.1, 0.0, 0.0, 0.0, 0.0]


# --- helpers ---------------------------------------------------------------------------------
# Prefixes that existed when this module began: segments other test modules left over the shared test corpus (a
# run killed with SIGKILL leaves its segments to the next run over that corpus; an orphaned worker may still map
# them). This module judges only the segments made while it runs.
EARLIER: set[str] = set()


def _our_segments(root: Path) -> set[str]:
    """/dev/shm segments made during this module of datasets over streams under `root` (other jobs' ignored)."""
    root = os.path.realpath(root)
    found = set()
    for prefix, segments in streaming_segments().items():
        if prefix in EARLIER:
            continue
        dirs = registered_locals(SHM_DIR / f"{prefix}_locals")
        if any(os.path.realpath(d).startswith(root) for d in dirs):
            found.update(s.name for s in segments)
    return found


@pytest.fixture(scope="module", autouse=True)
def no_shared_memory_left(tmp_path_factory):
    """After this module's tests, no segment of a dataset over our test corpora remains."""
    EARLIER.update(streaming_segments())
    yield
    import gc

    gc.collect()
    assert _our_segments(tmp_path_factory.getbasetemp()) == set()


def _weights_file(tmp_path, manifest, values, name="weights.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps({"domains": manifest.domains, "weights": values}))
    return str(path)


def _mixture(corpus, spec, epoch_size, batch, seed=0, every=0) -> DomainMixture:
    manifest = load_manifest(corpus)
    return DomainMixture(corpus, manifest, resolve_schedule(manifest, spec, every), epoch_size, batch, seed, World())


def _draw(mixture: DomainMixture, start: int, stop: int) -> list[tuple[int, str]]:
    """(domain id, block hash) of every sample drawn for steps start..stop-1."""
    seen = []
    for step in range(start, stop):
        batch = mixture.next_batch(step)
        for tokens, domain in zip(batch["input_ids"], batch["domain"]):
            seen.append((int(domain), hashlib.sha1(tokens.numpy().tobytes()).hexdigest()[:16]))
    return seen


def _corpus_blocks(corpus) -> dict[str, Counter]:
    """Domain -> multiset of the hashes of its training blocks, read straight from the streams."""
    from streaming import LocalDataset

    manifest = load_manifest(corpus)
    out = {}
    for d in manifest.domains:
        ds = LocalDataset(str(manifest.stream_dir(corpus, "train", d)))
        out[d] = Counter(
            hashlib.sha1(np.asarray(ds[i]["tokens"]).astype(np.int64).tobytes()).hexdigest()[:16]
            for i in range(len(ds))
        )
    return out


def _assert_windows_match(domains: np.ndarray, weights: list[float], window: int, stride: int, tolerance) -> None:
    for start in range(0, len(domains) - window + 1, stride):
        part = domains[start : start + window]
        for d, w in enumerate(weights):
            share = float(np.mean(part == d))
            allowed = tolerance(w, window)
            assert abs(share - w) <= allowed, (
                f"window {start}: domain {d} share {share:.4f} vs weight {w} (+-{allowed:.4f})"
            )


# --- achieved vs target mixture --------------------------------------------------------------
def test_achieved_mixture_matches_the_weights(synth_corpus, tmp_path):
    manifest = load_manifest(synth_corpus)
    total = sum(s.blocks for s in manifest.splits["train"].values())
    mixture = _mixture(synth_corpus, _weights_file(tmp_path, manifest, SKEWED), epoch_size=total, batch=64)
    steps_per_epoch, epochs = total // 64, 12  # 12 epochs of 896: 10,752 samples
    try:
        seen = _draw(mixture, 0, steps_per_epoch * epochs)
        reported = mixture.mixture()
    finally:
        mixture.close()
    domains = np.array([d for d, _ in seen])
    assert len(domains) >= 10_000
    # zero weight: never sampled; the others keep their own domain ids
    assert set(domains.tolist()) == {0, 1, 2}
    blocks = _corpus_blocks(synth_corpus)
    assert all(h in blocks[manifest.domains[d]] for d, h in seen)
    # per epoch: mosaicml-streaming's counts are exact to rounding
    for e in range(epochs):
        counts = np.bincount(domains[e * total : (e + 1) * total], minlength=7)
        assert np.all(np.abs(counts - total * np.array(SKEWED)) <= 1), counts
    # any window of >= 10k samples: within 1 percentage point
    _assert_windows_match(domains, SKEWED, 10_000, 64, lambda w, n: 0.01)
    # shuffling spreads each epoch's samples evenly: small windows stay inside the binomial 3-sigma band
    _assert_windows_match(domains, SKEWED, 448, 448, lambda w, n: 3 * math.sqrt(w * (1 - w) / n) + 1e-9)
    # upsampled noise (179 draws of its 128 distinct blocks per epoch) repeats every block once or twice
    first = Counter(h for d, h in seen[:total] if d == 1)
    assert set(first.values()) == {1, 2} and sum(first.values()) in (179, 180) and len(first) == 128
    # the reported cumulative mixture is the same count
    for d, w in zip(manifest.domains, SKEWED):
        assert reported["domains"][d]["target"] == pytest.approx(w)
        assert reported["domains"][d]["achieved"] == pytest.approx(float(np.mean(domains == manifest.domain_id(d))))


def test_a_tiny_domain_repeats_evenly(tmp_path):
    corpus = tmp_path / "tiny"
    write_synthetic_corpus(corpus, seed=1, tokens_per_domain=1024, seq_len=64)
    manifest = load_manifest(corpus)
    blocks = {d: manifest.splits["train"][d].blocks for d in manifest.domains}
    weights = [0.3, 0.25, 0.15, 0.1, 0.1, 0.05, 0.05]
    mixture = _mixture(corpus, _weights_file(tmp_path, manifest, weights), epoch_size=10_240, batch=64)
    try:
        seen = _draw(mixture, 0, 160)  # one epoch of 10,240
    finally:
        mixture.close()
    domains = np.array([d for d, _ in seen])
    _assert_windows_match(domains, weights, 10_000, 64, lambda w, n: 0.01)
    # noise blocks are all distinct: each one is drawn floor(r) or ceil(r) times, r = choose / blocks
    choose = round(10_240 * weights[1])
    repeats = Counter(h for d, h in seen if d == manifest.domain_id("noise"))
    r = choose / blocks["noise"]
    assert len(repeats) == blocks["noise"] and set(repeats.values()) <= {math.floor(r), math.ceil(r)}


# --- exact resume ----------------------------------------------------------------------------
def _schedule(tmp_path, manifest) -> str:
    two = {d: (0.5 if d in manifest.domains[:2] else 0.0) for d in manifest.domains}
    path = tmp_path / "schedule.yaml"
    path.write_text(
        "- {start_step: 0, weights: uniform}\n"
        f"- {{start_step: 20, weights: {json.dumps(two)}}}\n"
        f"- {{start_step: 45, weights: {_weights_file(tmp_path, manifest, SKEWED, 'skewed.json')}}}\n"
    )
    return str(path)


@pytest.mark.parametrize("stop", [7, 15, 20, 30, 47])
def test_resume_across_epochs_and_phases_gives_the_same_samples(synth_corpus, tmp_path, stop):
    manifest = load_manifest(synth_corpus)
    spec = _schedule(tmp_path, manifest)
    # epoch of 160 = 10 steps of 16: epoch boundaries at 10, 20, 30, ...; phases at 20 and 45
    straight = _mixture(synth_corpus, spec, 160, 16)
    try:
        expected = _draw(straight, 0, 60)
        expected_state = straight.state_dict()
    finally:
        straight.close()
    first = _mixture(synth_corpus, spec, 160, 16)
    try:
        head = _draw(first, 0, stop)
        state = json.loads(json.dumps(first.state_dict()))  # what a checkpoint holds
    finally:
        first.close()
    second = _mixture(synth_corpus, spec, 160, 16)
    try:
        second.load_state_dict(state)
        tail = _draw(second, stop, 60)
        assert second.state_dict() == expected_state
    finally:
        second.close()
    assert head + tail == expected
    domains = [d for d, _ in expected]
    assert set(domains[20 * 16 : 45 * 16]) == {0, 1} and set(domains[45 * 16 :]) == {0, 1, 2}


@pytest.fixture(scope="session")
def make_config(train_config):
    """This file's validated TrainConfig; any default can be overridden."""
    return functools.partial(
        train_config,
        steps=20,
        batch_size=8,
        lr=3e-3,
        final_lr=3e-4,
        warmup_steps=2,
        eval_every=0,
        eval_blocks=8,
        checkpoint_every=10,
        log_every=2,
        progress=False,
    )


def test_trainer_resume_across_a_phase_boundary_is_exact(synth_corpus, tiny_spec, tmp_path, crash_at_step, make_config):
    manifest = load_manifest(synth_corpus)
    schedule = tmp_path / "phases.json"
    schedule.write_text(
        json.dumps(
            [
                {"start_step": 0, "weights": "uniform"},
                {"start_step": 12, "weights": dict(zip(manifest.domains, SKEWED))},
            ]
        )
    )
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    loop.train(make_config(synth_corpus, tiny_spec, straight, domain_weights=str(schedule)))
    with crash_at_step(15), pytest.raises(KeyboardInterrupt):
        loop.train(make_config(synth_corpus, tiny_spec, resumed, domain_weights=str(schedule)))
    loop.train(make_config(synth_corpus, tiny_spec, resumed, domain_weights=str(schedule), resume=True))

    def records(run):
        out = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k != "time"} for r in out]

    assert records(straight) == records(resumed)
    steps = {r["step"]: r for r in records(straight) if "mixture" in r}
    assert steps[10]["mixture"]["phase"] == 0 and steps[14]["mixture"]["phase"] == 1
    assert steps[10]["mixture"]["domains"]["copy"]["target"] == pytest.approx(1 / 7)
    assert steps[20]["mixture"]["domains"]["copy"] == {"target": 0.0, "achieved": 0.0, "samples": 0}
    assert sum(v["samples"] for v in steps[20]["mixture"]["domains"].values()) == 8 * 8  # steps 12..19


# --- ranks -----------------------------------------------------------------------------------
def _torchrun(free_port, tmp_path, corpus, weights, epoch_size, batch, steps, name) -> list[dict]:
    out = tmp_path / name
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={free_port()}",
        str(REPO / "tests" / "scripts" / "mixture_worker.py"),
        str(corpus),
        weights,
        str(epoch_size),
        str(batch),
        str(steps),
        str(out),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads((out / f"rank-{r}.json").read_text()) for r in range(2)]


@pytest.mark.distributed
def test_two_ranks_see_disjoint_samples_with_the_target_mixture(synth_corpus, tmp_path, free_port):
    manifest = load_manifest(synth_corpus)
    total = sum(s.blocks for s in manifest.splits["train"].values())
    # uniform weights over equal domains, one epoch of every block once: the ranks split the corpus
    ranks = _torchrun(free_port, tmp_path, synth_corpus, "uniform", total, 16, total // 32, "uniform")
    union = Counter(tuple(s) for r in ranks for s in r["seen"])
    corpus = Counter(
        (manifest.domain_id(d), h) for d, hs in _corpus_blocks(synth_corpus).items() for h in hs.elements()
    )
    assert union == corpus  # every block exactly as often as it is in the corpus: disjoint, nothing missing
    # skewed weights over 10k+ samples: the union has the target mixture, and both ranks report it
    ranks = _torchrun(
        free_port,
        tmp_path,
        synth_corpus,
        _weights_file(tmp_path, manifest, SKEWED),
        total,
        16,
        (total // 32) * 12,
        "skewed",
    )
    domains = np.array([s[0] for r in ranks for s in r["seen"]])
    assert len(domains) >= 10_000
    for d, w in enumerate(SKEWED):
        assert abs(float(np.mean(domains == d)) - w) <= 0.01
    assert ranks[0]["mixture"] == ranks[1]["mixture"]
    for d, _w in zip(manifest.domains, SKEWED):
        assert ranks[0]["mixture"]["domains"][d]["achieved"] == pytest.approx(
            float(np.mean(domains == manifest.domain_id(d)))
        )


# --- shared memory ---------------------------------------------------------------------------
HOLDER = """
import sys
from mixweight.data.manifest import load_manifest
from mixweight.sampling.mixture import DomainMixture
from mixweight.sampling.schedule import resolve_schedule
from mixweight.core.distributed import World
corpus, mode = sys.argv[1], sys.argv[2]
m = load_manifest(corpus)
mixture = DomainMixture(corpus, m, resolve_schedule(m, "uniform"), 64, 8, 0, World())
mixture.next_batch(0)
print("ready", flush=True)
if mode == "crash":  # killed with its process group (kill -9, OOM): no close(), no resource tracker
    import os, signal
    from multiprocessing import resource_tracker
    if resource_tracker._resource_tracker._pid is not None:
        os.kill(resource_tracker._resource_tracker._pid, signal.SIGKILL)
    os._exit(1)
sys.stdin.readline()
mixture.close()
"""


def test_stale_cleanup_removes_only_dead_segments_of_our_corpus(synth_corpus, tmp_path):
    other = tmp_path / "other"
    write_synthetic_corpus(other, seed=2, tokens_per_domain=2048, seq_len=64)
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def start(corpus, mode):
        return subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(corpus), mode],
            env=env,
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )

    live = start(synth_corpus, "live")  # a concurrent job over the same corpus
    try:
        assert live.stdout.readline().strip() == "ready"
        for corpus in (synth_corpus, other):  # crashed jobs over our corpus and over another one
            crashed = start(corpus, "crash")
            crashed.communicate(timeout=120)
        ours, theirs = _our_segments(Path(synth_corpus).parent), _our_segments(other)
        prefixes = {name[:6] for name in ours}
        assert len(prefixes) == 2 and theirs  # the live job's and the crashed one's; the other corpus's
        manifest = load_manifest(synth_corpus)
        removed = clean_stale_shared_memory(
            [str(manifest.stream_dir(synth_corpus, "train", d)) for d in manifest.domains]
        )
        removed = [name for name in removed if name[:6] not in EARLIER]  # (an earlier module's dead job's too)
        left = _our_segments(Path(synth_corpus).parent)
        assert removed and set(removed) | left == ours and not set(removed) & left
        assert len({name[:6] for name in left}) == 1  # only the live job's prefix survives
        assert _our_segments(other) == theirs  # another corpus's segments are not ours to judge
    finally:
        live.communicate("done\n", timeout=120)
    assert _our_segments(Path(synth_corpus).parent) == set()  # the live job closed cleanly
    other_manifest = load_manifest(other)
    clean_stale_shared_memory([str(other_manifest.stream_dir(other, "train", d)) for d in other_manifest.domains])
    assert _our_segments(other) == set()


# --- schedules and weights files -------------------------------------------------------------
def test_schedule_phases_and_trajectory(synth_corpus, tmp_path):
    manifest = load_manifest(synth_corpus)
    phases = resolve_schedule(manifest, _schedule(tmp_path, manifest))
    assert [p.start_step for p in phases] == [0, 20, 45]
    assert [phase_at(phases, s) for s in (0, 19, 20, 44, 45, 10**6)] == [0, 0, 1, 1, 2, 2]
    assert list(phases[2].weights.values()) == pytest.approx(SKEWED)
    uniform = [1 / 7] * 7
    artifact = tmp_path / "domain_weights.json"
    artifact.write_text(
        json.dumps(
            {
                "domains": manifest.domains,
                "weights": SKEWED,
                "trajectory": [
                    {"step": 0, "weights": uniform},
                    {"step": 100, "weights": dict(zip(manifest.domains, SKEWED))},
                    {"step": 200, "weights": [0.5, 0.5, 0, 0, 0, 0, 0]},
                ],
            }
        )
    )
    followed = resolve_schedule(manifest, str(artifact), every=5)
    assert [p.start_step for p in followed] == [0, 5, 10]
    assert list(followed[2].weights.values()) == pytest.approx([0.5, 0.5, 0, 0, 0, 0, 0])
    final = resolve_schedule(manifest, str(artifact), every=0)
    assert len(final) == 1 and list(final[0].weights.values()) == pytest.approx(SKEWED)


def test_weights_within_tolerance_are_renormalized(synth_corpus, tmp_path):
    manifest = load_manifest(synth_corpus)
    spec = _weights_file(tmp_path, manifest, [0.7, 0.2, 0.1005, 0, 0, 0, 0])
    (phase,) = resolve_schedule(manifest, spec)
    assert sum(phase.weights.values()) == pytest.approx(1.0, abs=1e-12)
    assert phase.weights["unigram"] == pytest.approx(0.1005 / 1.0005)


@pytest.mark.parametrize(
    "weights, message",
    [
        ({"web": 0.5, "redundant": 0.5}, "not in the corpus: \\['web'\\]"),
        ({"redundant": 0.5, "noise": 0.5}, "missing for corpus domains"),
        ([0.7, 0.2, 0.2, 0, 0, 0, 0], "sum to 1.1"),
        ([70, 20, 10, 0, 0, 0, 0], "sum to 100"),
        ([0.7, 0.2, 0.2, -0.1, 0, 0, 0], "finite and >= 0"),
        ([0.7, 0.2, float("nan"), 0, 0, 0, 0], "finite and >= 0"),
        ([0, 0, 0, 0, 0, 0, 0], "sum to 0"),
    ],
)
def test_bad_weights_files_are_refused(synth_corpus, tmp_path, weights, message):
    manifest = load_manifest(synth_corpus)
    path = tmp_path / "w.json"
    raw = {"weights": weights} if isinstance(weights, dict) else {"domains": manifest.domains, "weights": weights}
    path.write_text(json.dumps(raw))
    with pytest.raises(MixweightError, match=message):
        resolve_schedule(manifest, str(path))


@pytest.mark.parametrize(
    "phases, message",
    [
        ([{"start_step": 0, "weights": "uniform"}, {"start_step": 0, "weights": "natural"}], "repeats the previous"),
        (
            [
                {"start_step": 0, "weights": "uniform"},
                {"start_step": 50, "weights": "natural"},
                {"start_step": 20, "weights": "uniform"},
            ],
            "increasing start_step order",
        ),
        ([{"start_step": 10, "weights": "uniform"}], "must start at step 0"),
        ([{"start_step": 0, "weight": "uniform"}], "unknown key 'weight'.*did you mean 'weights'"),
        ([{"start_step": 0, "weights": "uniform", "every": 3}], "unknown key 'every'"),
        ([{"start_step": 0}], "missing weights"),
        ([{"start_step": -1, "weights": "uniform"}], "integer >= 0"),
        ([{"start_step": 0, "weights": "nope.json"}], "nope.json not found"),
        ([{"start_step": 0, "weights": {"redundant": 1.0}}], "missing for corpus domains"),
        ([], "no phases"),
    ],
)
def test_bad_schedules_are_refused(synth_corpus, tmp_path, phases, message):
    manifest = load_manifest(synth_corpus)
    path = tmp_path / "schedule.json"
    path.write_text(json.dumps(phases))
    with pytest.raises(MixweightError, match=message):
        resolve_schedule(manifest, str(path))


def test_schedule_option_conflicts_are_refused(synth_corpus, tmp_path):
    manifest = load_manifest(synth_corpus)
    with pytest.raises(MixweightError, match="needs a domain_weights.json with a trajectory"):
        resolve_schedule(manifest, "uniform", every=5)
    with pytest.raises(MixweightError, match="has none"):
        resolve_schedule(manifest, _weights_file(tmp_path, manifest, SKEWED), every=5)
    with pytest.raises(MixweightError, match="expected natural, uniform"):
        resolve_schedule(manifest, str(tmp_path / "missing.json"))


def test_stratified_batching_is_refused_with_the_reason(synth_corpus, tmp_path, make_config):
    with pytest.raises(MixweightError, match="drops the samples"):
        make_config(synth_corpus, "gpt2-tiny", tmp_path / "run", batching="stratified")
    with pytest.raises(MixweightError, match="random, per_stream"):
        make_config(synth_corpus, "gpt2-tiny", tmp_path / "run", batching="balanced")


def test_per_stream_batches_come_from_one_domain(synth_corpus):
    manifest = load_manifest(synth_corpus)
    mixture = DomainMixture(
        synth_corpus, manifest, resolve_schedule(manifest, "uniform"), 896, 16, 0, World(), batching="per_stream"
    )
    try:
        batches = [mixture.next_batch(s)["domain"] for s in range(56)]
    finally:
        mixture.close()
    assert all(len(set(b.tolist())) == 1 for b in batches)
    assert np.bincount(torch.cat(batches).numpy(), minlength=7).tolist() == [128] * 7
