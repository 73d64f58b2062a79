"""DoGE: the score and update formulas, the per-domain gradients, and the proxy run's artifact."""

import dataclasses
import json
import math
import subprocess
import sys

import pytest
import torch

from mixweight.core.artifact import load_domain_weights, parse_domain_weights
from mixweight.core.distributed import World
from mixweight.core.loss import per_sample_loss
from mixweight.core.model import build_model
from mixweight.data.manifest import load_manifest
from mixweight.data.streams import read_stream
from mixweight.domain.doge import DoGEObjective, heldout_mix_mask, replay, resolve_target
from mixweight.domain.doge_run import DoGEConfig, check_targets, run_doge
from mixweight.domain.doge_update import clip_rows, doge_scores, doge_step, doge_update
from mixweight.domain.verify import verify_weights
from mixweight.errors import MixweightError
from mixweight.train.checkpoint import list_checkpoints
from mixweight.train.config import TrainConfig
from mixweight.train.loop import train

# --- pure pieces -------------------------------------------------------------------------


def test_universal_scores_exclude_the_self_term():
    grads = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    # s_i = <g_i, sum_{j != i} g_j>: <[1,0],[1,3]> = 1, <[0,2],[2,1]> = 2, <[1,1],[1,2]> = 3
    torch.testing.assert_close(
        doge_scores(grads, "all", score="paper"), torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    )


def test_paper_out_of_domain_scores_use_the_mean_target_gradient():
    grads = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    targets = torch.tensor([[2.0, 0.0], [0.0, 2.0], [9.0, 9.0]])
    # g_target = mean of rows 0 and 1 = [1, 1]
    torch.testing.assert_close(
        doge_scores(grads, [0, 1], score="paper", target_grads=targets),
        torch.tensor([1.0, 2.0, 2.0], dtype=torch.float64),
    )


def test_reference_scores_sum_the_targets_divide_by_the_mean_norm_and_clip_to_0_5():
    grads = torch.tensor([[3.0, 0.0], [0.0, -1.0], [30.0, 0.0]])
    targets = torch.tensor([[1.0, 1.0], [1.0, 1.0], [9.0, 9.0]])
    # g_target = SUM of rows 0, 1 = [2, 2]; raw = 6, -2, 60; mean norm (3 + 1 + 30) / 3 = 34/3
    norm = 34 / 3 + 1e-6
    expected = torch.tensor([6 / norm, 0.0, 5.0], dtype=torch.float64)  # 60 / norm = 5.29 is clipped to 5
    got = doge_scores(grads, [0, 1], score="reference", target_grads=targets)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)
    assert got[2].item() == 5.0 and got[1].item() == 0.0  # both clip bounds are reached


def test_clip_rows_is_clip_grad_norm_per_row():
    rows = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])
    clip_rows(rows, 1.0)
    # ||[3, 4]|| = 5 > 1: scaled by 1 / (5 + 1e-6); the others are below the bound and kept
    torch.testing.assert_close(rows, torch.tensor([[3 / (5 + 1e-6), 4 / (5 + 1e-6)], [0.3, 0.4], [0.0, 0.0]]))
    for row in ([3.0, 4.0], [0.3, 0.4]):
        param = torch.nn.Parameter(torch.zeros(2))
        param.grad = torch.tensor(row)
        torch.nn.utils.clip_grad_norm_([param], 1.0)
        torch.testing.assert_close(clip_rows(torch.tensor([row]), 1.0)[0], param.grad)
    kept = torch.tensor([[30.0, 40.0]])
    torch.testing.assert_close(clip_rows(kept, 0.0), torch.tensor([[30.0, 40.0]]))  # 0: no clipping


def test_a_reference_step_by_hand():
    """The official code's step on two training domains and one target, computed by hand."""
    train = torch.tensor([[6.0, 8.0], [0.0, 0.5]])  # norms 10 and 0.5
    target = torch.tensor([[0.0, 2.0]])  # norm 2
    clip_rows(train, 5.0)
    clip_rows(target, 5.0)
    # clipped: [3, 4] (x 5 / (10 + 1e-6)), [0, 0.5] kept, target kept
    c = 5 / (10 + 1e-6)
    scores = doge_scores(train, [0], score="reference", target_grads=target)
    mean_norm = (10 * c + 0.5) / 2 + 1e-6
    expected = [min(16 * c / mean_norm, 5.0), 1.0 / mean_norm]  # <[6c, 8c], [0, 2]> = 16c, <[0, .5], [0, 2]> = 1
    torch.testing.assert_close(scores, torch.tensor(expected, dtype=torch.float64), rtol=1e-6, atol=0)
    alpha = doge_update(torch.tensor([0.5, 0.5]), scores, lr=1e-3, mu=0.01)
    logits = [math.log(0.5) + 1e-3 * s / 0.01 for s in expected]
    z = sum(math.exp(v) for v in logits)
    torch.testing.assert_close(alpha, torch.tensor([math.exp(v) / z for v in logits], dtype=torch.float64))


def test_held_out_mix_depends_on_the_block_alone():
    blocks = torch.randint(0, 256, (400, 64), generator=torch.Generator().manual_seed(0))
    mask = heldout_mix_mask(blocks, 8)
    assert 25 <= int(mask.sum()) <= 75  # about 1 in 8 of 400
    order = torch.randperm(400, generator=torch.Generator().manual_seed(1))
    assert torch.equal(heldout_mix_mask(blocks[order], 8), mask[order])  # not the position, not the batch
    assert torch.equal(heldout_mix_mask(blocks[:7], 8), mask[:7])


def test_target_names():
    assert resolve_target("mix", ["a", "b"]) == "mix"
    assert resolve_target("all", ["a", "b"]) == "all"
    assert resolve_target("a, b", ["a", "b", "c"]) == ["a", "b"]
    assert resolve_target("mix", ["a", "mix"]) == ["mix"]  # a corpus domain of that name is held out as itself


def test_update_matches_hand_computed_values_and_sums_to_one():
    alpha = torch.tensor([0.5, 0.25, 0.25])
    scores = torch.tensor([1.0, 0.0, -1.0])
    got = doge_update(alpha, scores, lr=0.1, mu=0.05)  # exponent lr * s / mu = 2 s
    raw = torch.tensor([0.5 * math.e**2, 0.25, 0.25 * math.e**-2], dtype=torch.float64)
    torch.testing.assert_close(got, raw / raw.sum())
    assert got.sum().item() == pytest.approx(1.0, abs=1e-12)


def test_update_keeps_absent_domains_and_is_stable_for_huge_scores():
    alpha = torch.tensor([0.5, 0.25, 0.25])
    got = doge_update(
        alpha, torch.tensor([1e6, 123.0, -1e6]), lr=1.0, mu=0.01, present=torch.tensor([True, False, True])
    )
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, torch.tensor([0.75, 0.25, 0.0], dtype=torch.float64))


def test_the_pure_update_matches_a_hand_computation():
    """doge_step from the rows' inner products alone: two training domains and a held-out target, clipped."""
    sums = torch.tensor([[6.0, 8.0], [0.0, 1.0], [0.0, 4.0]], dtype=torch.float64)  # summed gradients G_r
    counts = torch.tensor([2.0, 1.0, 2.0])  # mean gradients g_r = G_r / n_r: [3, 4] (norm 5), [0, 1], [0, 2]
    alpha = torch.tensor([0.5, 0.5], dtype=torch.float64)
    got = doge_step(sums @ sums.t(), counts, [0, 1, None], alpha, lr=0.1, mu=0.05, score="reference",
                    max_grad_norm=2.5, universal=False)  # fmt: skip
    c0 = 2.5 / (5 + 1e-6)  # clip_grad_norm_'s factor for row 0; rows 1 and 2 are below 2.5
    raw = [c0 * 8.0, 2.0]  # <c0 [3, 4], [0, 2]>, <[0, 1], [0, 2]>
    mean_norm = (5 * c0 + 1.0) / 2 + 1e-6
    scores = [min(max(v / mean_norm, 0.0), 5.0) for v in raw]
    logits = [math.log(0.5) + 0.1 * v / 0.05 for v in scores]
    new_alpha = [math.exp(v) / sum(math.exp(u) for u in logits) for v in logits]
    assert got.updated and got.present.tolist() == [True, True]
    torch.testing.assert_close(got.scores, torch.tensor(scores, dtype=torch.float64), rtol=1e-12, atol=0)
    torch.testing.assert_close(got.alpha, torch.tensor(new_alpha, dtype=torch.float64), rtol=1e-12, atol=0)
    torch.testing.assert_close(got.mix, got.alpha, rtol=1e-15, atol=0)  # every training domain present
    # the applied gradient sum_i alpha'_i c_i g_i = row_weights @ G: row 0 weighs alpha'_0 c0 / 2, the target 0
    expected_rows = torch.tensor([new_alpha[0] * c0 / 2, new_alpha[1], 0.0], dtype=torch.float64)
    torch.testing.assert_close(got.row_weights, expected_rows, rtol=1e-12, atol=0)

    # No target sample in the step: no update (alpha kept), the present domains still train, an absent one not.
    counts = torch.tensor([2.0, 0.0, 0.0])
    kept = doge_step(sums @ sums.t(), counts, [0, 1, None], alpha, 0.1, 0.05, "reference", 2.5, universal=False)
    assert not kept.updated and kept.alpha is alpha and kept.present.tolist() == [True, False]
    assert kept.mix.tolist() == [1.0, 0.0] and kept.scores.tolist() == [0.0, 0.0]
    torch.testing.assert_close(kept.row_weights, torch.tensor([c0 / 2, 0.0, 0.0], dtype=torch.float64))


def test_the_applied_gradient_is_the_official_sum_renormalised_over_the_present_domains():
    """The official code (add_model_grad_ls in src/trainer.py) applies sum_i alpha'_i g_i over the domains with a
    gradient this step, unnormalised; mixweight divides by the present domains' sum of alpha' (docs/algorithms.md
    section 3.4). With every domain present the two are the same gradient; with one absent, mixweight's is the
    official one scaled up by 1 / sum_present alpha'."""
    rng = torch.Generator().manual_seed(0)
    sums = torch.randn(4, 6, generator=rng, dtype=torch.float64)  # three training domains and a held-out target
    counts = torch.tensor([3.0, 2.0, 4.0, 5.0])
    alpha = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    for absent in (None, 1):
        n = counts.clone()
        if absent is not None:
            n[absent] = 0.0
        got = doge_step(sums @ sums.t(), n, [0, 1, 2, None], alpha, 0.1, 0.05, "reference", 0.0, universal=False)
        present = [i for i in range(3) if n[i] > 0]
        official = sum(got.alpha[i].item() * sums[i] / n[i].item() for i in present)  # sum alpha'_i g_i
        applied = got.row_weights @ sums
        mass = sum(got.alpha[i].item() for i in present)
        torch.testing.assert_close(applied, official / mass, rtol=1e-12, atol=1e-15)
        assert (mass == pytest.approx(1.0, abs=1e-15)) == (absent is None)


def test_bad_arguments_are_refused_where_they_enter():
    """Checked once, where a user gives them: DoGEConfig (and check_targets against the corpus's domains); the
    objective and the pure functions below it assume valid values."""
    for kwargs, match in [
        ({"score": "cosine"}, "reference, paper"),
        ({"mu": 0.0}, "'mu' must be > 0"),
        ({"max_grad_norm": -1.0}, "'max_grad_norm' must be >= 0"),
    ]:
        with pytest.raises(MixweightError, match=match):
            DoGEConfig(data="d", out="o", **kwargs).validate()
    for target, match in [("c", "--target 'c' is not a domain of the corpus"), ("a,b", "names every domain")]:
        config = DoGEConfig(data="d", out="o", target=target)
        config.validate()  # the form is right; the names are checked against the corpus's domains
        with pytest.raises(MixweightError, match=match):
            check_targets(config.targets(["a", "b"]), ["a", "b"])


# --- the objective's gradients ---------------------------------------------------------------


def _batch(corpus, domains, mix_blocks=0):
    """Blocks of `domains` that are not in the held-out mixture, then `mix_blocks` that are (from domains 0, 1, ...)."""
    manifest = load_manifest(corpus)
    blocks = {
        d: torch.from_numpy(read_stream(manifest.stream_dir(corpus, "train", name), limit=64))
        for d, name in enumerate(manifest.domains)
    }
    in_mix = {d: heldout_mix_mask(b, len(manifest.domains) + 1) for d, b in blocks.items()}
    plain = {d: iter(b[~in_mix[d]]) for d, b in blocks.items()}
    rows, ids = [next(plain[d]) for d in domains], list(domains)
    for i in range(mix_blocks):
        rows.append(blocks[i][in_mix[i]][0])
        ids.append(i)
    return manifest, {"input_ids": torch.stack(rows), "domain": torch.tensor(ids)}


def _flat_grad(model):
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


def _direct_grads(model, batch, masks):
    """The gradient of the mean loss over each mask's samples, by autograd, without the objective."""
    out = []
    for mask in masks:
        x = batch["input_ids"][mask]
        loss = per_sample_loss(model(input_ids=x).logits, x).mean()
        out.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(model.parameters()))]))
    return torch.stack(out)


DOMAINS_OF_8 = [0, 0, 0, 1, 2, 3, 5, 6]  # domain 0 three times, domain 4 absent
CASES = [
    ("all", "paper", 0.0),
    ("copy", "paper", 0.0),
    ("copy,arithmetic", "reference", 0.05),
    ("mix", "reference", 0.05),
]


@pytest.mark.parametrize("target, score, clip", CASES)
def test_domain_gradients_are_mean_loss_gradients_and_the_applied_gradient_mixes_them(
    synth_corpus, tiny_spec, target, score, clip
):
    mix_blocks = 2 if target == "mix" else 0
    manifest, batch = _batch(synth_corpus, DOMAINS_OF_8, mix_blocks)
    model = build_model(tiny_spec, manifest, seed=0)
    objective = DoGEObjective(manifest.domains, target, mu=0.01, score=score, max_grad_norm=clip)
    lr = 0.05
    result = objective.compute_gradients(model, [batch], step=0, world=World(), autocast=None, lr=lr)

    held_out = [manifest.domains.index(t) for t in target.split(",")] if target not in ("all", "mix") else []
    is_mix = torch.arange(len(batch["domain"])) >= len(DOMAINS_OF_8)  # the appended blocks
    train_ids = [d for d in range(7) if d != 4 and d not in held_out]
    grads = _direct_grads(model, batch, [(batch["domain"] == d) & ~is_mix for d in train_ids])
    target_masks = [is_mix] if target == "mix" else [batch["domain"] == d for d in held_out if d in DOMAINS_OF_8]
    if clip:
        assert grads.norm(dim=1).max() > clip  # the clipping is exercised
    clip_rows(grads, clip)
    if target == "all":
        scores = doge_scores(grads, "all", score=score)
    else:
        target_grads = clip_rows(_direct_grads(model, batch, target_masks), clip)
        scores = doge_scores(grads, list(range(len(target_masks))), score=score, target_grads=target_grads)
    slots = [objective.train_ids.index(d) for d in train_ids]
    present = torch.zeros(len(objective.train_ids), dtype=torch.bool)
    present[slots] = True
    full_scores = torch.zeros(len(objective.train_ids), dtype=torch.float64)
    full_scores[present] = scores
    k = len(objective.train_ids)
    expected_alpha = doge_update(torch.full((k,), 1 / k), full_scores, lr, 0.01, present)

    logged = objective.step_metrics()["doge"]
    got_scores = [logged["scores"][manifest.domains[d]] for d in train_ids]
    torch.testing.assert_close(torch.tensor(got_scores, dtype=torch.float64), scores, rtol=1e-4, atol=1e-7)
    assert logged["scores"]["markov2"] is None  # absent: no score, alpha kept
    assert logged["alpha"]["markov2"] == pytest.approx(1 / k, abs=1e-6)
    torch.testing.assert_close(
        torch.tensor(objective.last_weights(), dtype=torch.float64), expected_alpha, rtol=1e-5, atol=1e-8
    )

    mix = expected_alpha[present] / expected_alpha[present].sum()
    torch.testing.assert_close(_flat_grad(model), (mix.float() @ grads), rtol=1e-4, atol=1e-7)
    assert result.weights.sum().item() == pytest.approx(1.0, abs=1e-6)
    never_trained = is_mix | torch.isin(batch["domain"], torch.tensor(held_out or [-1]))
    assert (result.weights[never_trained] == 0).all() and (result.weights[~never_trained] > 0).all()
    assert result.losses.isfinite().all()
    assert objective.present[0] == present.tolist() and objective.lrs == [lr]


def test_one_micro_batch_of_8_equals_two_of_4(synth_corpus, tiny_spec):
    manifest, batch = _batch(synth_corpus, [0, 1, 2, 3, 4, 5], mix_blocks=2)  # the mixture's blocks split too
    runs = []
    for split in ([batch], [{k: v[:4] for k, v in batch.items()}, {k: v[4:] for k, v in batch.items()}]):
        model = build_model(tiny_spec, manifest, seed=0)
        objective = DoGEObjective(manifest.domains, "mix", mu=0.01, max_grad_norm=0.05)
        result = objective.compute_gradients(model, split, step=0, world=World(), autocast=None, lr=0.05)
        runs.append((objective.step_metrics()["doge"], objective.last_weights(), _flat_grad(model), result))
    (m1, a1, g1, r1), (m2, a2, g2, r2) = runs
    assert m1["updated"] and m2["updated"]
    for name in manifest.domains:
        if name == "copy":
            assert m1["scores"][name] is None and m2["scores"][name] is None  # absent in this batch
            continue
        assert m1["scores"][name] == pytest.approx(m2["scores"][name], rel=1e-4, abs=1e-7)
    torch.testing.assert_close(torch.tensor(a1), torch.tensor(a2), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(r1.weights, r2.weights)


# --- the proxy run ---------------------------------------------------------------------------


OPTIONS = {f.name for f in dataclasses.fields(DoGEConfig)}


def _config(corpus, spec, out, **overrides) -> DoGEConfig:
    """The nested form: DoGE's options, and a train block for any other key (lr, checkpoint_every, ...)."""
    values = dict(data=corpus, out=str(out), proxy=spec, steps=6, log_every=2)
    train = dict(batch_size=8, lr=3e-3, final_lr=3e-4, warmup_steps=2, checkpoint_every=100, progress=False)
    for key, value in overrides.items():
        (values if key in OPTIONS else train)[key] = value
    return DoGEConfig(**values, train=train)


def test_a_short_run_writes_a_valid_deterministic_artifact(synth_corpus, tiny_spec, tmp_path):
    first = run_doge(_config(synth_corpus, tiny_spec, tmp_path / "a" / "weights.json"))
    run_doge(_config(synth_corpus, tiny_spec, tmp_path / "b" / "weights.json"))
    a, b = (tmp_path / "a" / "weights.json").read_bytes(), (tmp_path / "b" / "weights.json").read_bytes()
    assert a == b
    loaded = load_domain_weights(tmp_path / "a" / "weights.json")  # the artifact validator
    assert loaded.domains == load_manifest(synth_corpus).domains
    assert sum(loaded.weights) == pytest.approx(1.0, abs=1e-9) and all(math.isfinite(w) for w in loaded.weights)
    assert sum(first.last_weights) == pytest.approx(1.0, abs=1e-9)
    raw = json.loads(a)
    # the published universal configuration is the default: the held-out mixture, the official code's score
    assert raw["method"] == {
        "name": "doge",
        "score": "reference",
        "target": "mix",
        "mu": 0.01,
        "max_grad_norm": 5.0,
        "steps": 6,
    }
    assert "targets" not in raw and len(raw["replay"]["lr"]) == 6
    assert [e["step"] for e in raw["trajectory"]] == [2, 4, 6]
    assert set(raw["provenance"]) >= {
        "seed",
        "config_hash",
        "proxy",
        "tokenizer_fingerprint",
        "domain_token_counts",
        "mixweight_version",
    }
    assert (tmp_path / "a" / "weights.work" / "proxy" / "metrics.jsonl").is_file()
    # the proxy's FLOPs, with its extra work per step: the inner products of the 8 rows (7 domains and the held-out
    # mixture) of P gradient entries and their mixture
    proxy = json.loads((tmp_path / "a" / "weights.work" / "proxy" / "eval.json").read_text())["compute"]
    assert raw["compute"] == {"flops": proxy["flops"], "runs": {"proxy": proxy["flops"]}}
    size = sum(p.numel() for p in build_model(tiny_spec, load_manifest(synth_corpus), 0).parameters())
    assert proxy["extra_flops_per_step"] == {"domain_gradients": 2 * 8 * 8 * size + 2 * 8 * size}


@pytest.fixture(scope="module")
def copy_target_artifact(synth_corpus, tiny_spec, tmp_path_factory):
    """A 4-step DoGE run with `copy` held out, every step logged."""
    out = tmp_path_factory.mktemp("doge_copy") / "w.json"
    run_doge(_config(synth_corpus, tiny_spec, out, steps=4, log_every=1, target="copy"))
    return out


def test_out_of_domain_artifact_lists_every_domain_and_trains(copy_target_artifact, synth_corpus, tiny_spec, tmp_path):
    weights = load_domain_weights(copy_target_artifact)
    assert weights.domains == load_manifest(synth_corpus).domains  # every corpus domain, the target included
    assert weights.targets == ["copy"] and weights.as_dict()["copy"] == 0.0
    assert sum(weights.weights) == pytest.approx(1.0, abs=1e-9)
    assert weights.method["mu"] == 0.05 and weights.method["max_grad_norm"] == 1.0  # the published OOD config

    run = tmp_path / "run"
    train(
        TrainConfig(
            data=synth_corpus,
            out=str(run),
            model=tiny_spec,
            steps=3,
            batch_size=8,
            log_every=1,
            eval_every=0,
            checkpoint_every=100,
            progress=False,
            domain_weights=str(copy_target_artifact),
        )
    )
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    mixtures = [r["mixture"]["domains"] for r in records if "mixture" in r]
    assert mixtures and all(m["copy"]["samples"] == 0 for m in mixtures)
    assert sum(mixtures[-1][d]["samples"] for d in mixtures[-1]) == 3 * 8


def test_replay_recomputes_the_recorded_trajectory(copy_target_artifact):
    weights = load_domain_weights(copy_target_artifact)
    block = weights.replay
    assert block["steps"] == 4 and block["domains"] == [d for d in weights.domains if d != "copy"]
    rows = replay(weights)
    assert rows.shape == (5, 6)
    for entry in weights.trajectory:  # every step is logged here
        logged = [entry["weights"][d] for d in block["domains"]]
        assert abs(rows[entry["step"]] - logged).max() < 1e-6
    by_name = weights.as_dict()
    assert abs(rows[1:].mean(axis=0) - [by_name[d] for d in block["domains"]]).max() < 1e-6
    assert rows[0].tolist() == [1 / 6] * 6
    assert verify_weights(weights).max_deviation < 1e-9  # `mixweight weights verify` agrees

    raw = json.loads(copy_target_artifact.read_text())
    step = next(t for t, present in enumerate(raw["replay"]["present"]) if any(present) and raw["replay"]["lr"][t] > 0)
    first_present = raw["replay"]["present"][step].index(True)
    raw["replay"]["signals"][step][first_present] += 3.0  # one edited score moves the trajectory
    edited = replay(raw)
    logged = [raw["trajectory"][step]["weights"][d] for d in block["domains"]]
    assert abs(edited[step + 1] - logged).max() > 1e-6
    assert verify_weights(parse_domain_weights(raw, "edited")).max_deviation > 1e-6


def test_replay_refuses_an_incomplete_block():
    block = {
        "domains": ["a", "b"],
        "steps": 1,
        "initial_weights": [0.5, 0.5],
        "signals": [[0.0, 1.0]],
        "present": [[True, True]],
        "mu": 0.01,
        "lr": [1e-3],
    }
    replay({"domains": ["a", "b"], "replay": block})  # complete: replays
    for key, value, message in (
        ("lr", None, "'replay.lr' must be 1 finite numbers"),
        ("mu", None, "'replay.mu' must be a finite number"),
        ("mu", 0.0, "'replay.mu' must be > 0"),
    ):
        with pytest.raises(MixweightError, match=message):
            replay({"domains": ["a", "b"], "replay": {**block, key: value}})


def test_collapsed_weights_are_warned_recorded_and_printed(synth_corpus, tiny_spec, tmp_path, capsys):
    # a raw score with a tiny temperature: the weights go one-hot within the first steps
    weights = run_doge(
        _config(synth_corpus, tiny_spec, tmp_path / "w.json", steps=4, score="paper", target="all", mu=1e-7)
    )
    codes = [w["code"] for w in weights.warnings]
    assert "one-hot" in codes
    recorded = json.loads((tmp_path / "w.json").read_text())["warnings"]
    assert recorded == weights.warnings and all(set(w["domains"]) <= set(weights.domains) for w in recorded)
    assert "mixweight doge: warning: [one-hot]" in capsys.readouterr().err


def test_out_naming_a_directory_is_refused_before_training(synth_corpus, tiny_spec, tmp_path):
    (tmp_path / "weights").mkdir()
    with pytest.raises(MixweightError, match="is a directory"):
        run_doge(_config(synth_corpus, tiny_spec, tmp_path / "weights"))
    assert not (tmp_path / "weights.work").exists() and list((tmp_path / "weights").iterdir()) == []


def test_resume_after_a_crash_gives_the_same_weights(synth_corpus, tiny_spec, tmp_path, crash_at_step):
    run_doge(_config(synth_corpus, tiny_spec, tmp_path / "straight.json", checkpoint_every=4))
    with crash_at_step(5, objective=DoGEObjective), pytest.raises(KeyboardInterrupt):
        run_doge(_config(synth_corpus, tiny_spec, tmp_path / "resumed.json", checkpoint_every=4))
    assert not (tmp_path / "resumed.json").exists()
    assert [s for s, _ in list_checkpoints(tmp_path / "resumed.work" / "proxy")] == [4]
    run_doge(_config(synth_corpus, tiny_spec, tmp_path / "resumed.json", checkpoint_every=4))
    assert (tmp_path / "straight.json").read_bytes() == (tmp_path / "resumed.json").read_bytes()


def test_a_work_dir_of_another_config_is_refused(synth_corpus, tiny_spec, tmp_path, capsys):
    first = run_doge(_config(synth_corpus, tiny_spec, tmp_path / "w.json", steps=2))
    capsys.readouterr()
    again = run_doge(_config(synth_corpus, tiny_spec, tmp_path / "w.json", steps=2))  # reused: nothing trained
    assert "mixweight train:" not in capsys.readouterr().out and again.weights == first.weights
    with pytest.raises(
        MixweightError, match=r"holds doge proxy runs made with a different config \(mu: 0.01 -> 0.05\)"
    ):
        run_doge(_config(synth_corpus, tiny_spec, tmp_path / "w.json", steps=2, mu=0.05))
    with pytest.raises(MixweightError, match=r"proxy: a finished run with a different config \(lr: 0.003 -> 0.002"):
        run_doge(_config(synth_corpus, tiny_spec, tmp_path / "w.json", steps=2, lr=2e-3))


@pytest.mark.parametrize("target, suggestion", [("arithmetc", "arithmetic"), ("markov", "markov"), ("wiki", None)])
def test_unknown_target_domain_names_it_and_suggests(synth_corpus, tiny_spec, tmp_path, target, suggestion):
    with pytest.raises(MixweightError) as error:
        run_doge(_config(synth_corpus, tiny_spec, tmp_path / "w.json", target=f"noise,{target}"))
    message = str(error.value)
    assert f"'{target}'" in message and "redundant, noise, unigram" in message
    if suggestion:
        assert f"did you mean '{suggestion}" in message
    assert not (tmp_path / "w.work").exists()  # refused before any training


def test_bad_config_values_are_refused():
    with pytest.raises(MixweightError, match="score"):
        DoGEConfig(data="d", out="o", score="cosine").validate()
    with pytest.raises(MixweightError, match="target"):
        DoGEConfig(data="d", out="o", target="noise,").validate()
    with pytest.raises(MixweightError, match="not the official code's form; use 'reference'"):
        DoGEConfig(data="d", out="o", score="normalized-clipped").validate()
    with pytest.raises(MixweightError, match="max_grad_norm"):
        DoGEConfig(data="d", out="o", max_grad_norm=-1.0).validate()
    with pytest.raises(MixweightError, match="train.fsdp is not supported"):
        DoGEConfig(data="d", out="o", train={"fsdp": True}).validate()


def test_compile_with_the_ghost_gradients_is_refused_in_one_line_before_training(synth_corpus, tiny_spec, tmp_path):
    """The fuzz's case: `--train.compile` with the default doge_impl ghost raised torch's donated-buffers error from
    the first step; refused before anything is written, and doge_impl loop (one backward per domain) is allowed."""
    from tests.sandbox import assert_refused, listing, run_cli

    argv = ["weights", "doge", "--data", synth_corpus, "--proxy", tiny_spec, "--out", tmp_path / "w.json"]
    before = listing(tmp_path)
    line = assert_refused(run_cli([*argv, "--steps", "1", "--train.compile"]))
    assert "train.compile does not work with doge_impl ghost" in line and "doge_impl loop" in line
    assert listing(tmp_path) == before
    DoGEConfig(data="d", out="o", doge_impl="loop", train={"compile": True}).validate()


def test_published_defaults_follow_the_target_kind():
    domains = ["a", "b", "c"]
    assert (
        DoGEConfig(data="d", out="o").resolved(domains).mu,
        DoGEConfig(data="d", out="o").resolved(domains).max_grad_norm,
    ) == (0.01, 5.0)
    ood = DoGEConfig(data="d", out="o", target="c").resolved(domains)
    assert (ood.mu, ood.max_grad_norm) == (0.05, 1.0)
    paper = DoGEConfig(data="d", out="o", score="paper", mu=0.2).resolved(domains)
    assert (paper.mu, paper.max_grad_norm) == (0.2, 0.0)


# float64 proxies: 1 and 2 processes sum in other orders, which Adam amplifies in float32 by a CPU-dependent
# amount (test_train_weighting's EXACT_ATOL note); float64 runs agree to ~2e-15 relative (measured)
TWO_RANK_SCRIPT = """
import sys
import torch
torch.set_default_dtype(torch.float64)
from mixweight.domain.doge_run import DoGEConfig, run_doge
corpus, spec, out, batch = sys.argv[1:5]
run_doge(DoGEConfig(data=corpus, out=out, proxy=spec, steps=3, batch_size=int(batch), lr=3e-3, final_lr=3e-4,
                    warmup_steps=1, log_every=1, progress=False))
"""


@pytest.mark.distributed
def test_two_processes_equal_one_process(synth_corpus, tiny_spec, tmp_path):
    script = tmp_path / "doge_run.py"
    script.write_text(TWO_RANK_SCRIPT)
    one = subprocess.run(
        [sys.executable, str(script), synth_corpus, tiny_spec, str(tmp_path / "one.json"), "8"],
        capture_output=True,
        text=True,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29531"]
    two = subprocess.run(
        [*torchrun, str(script), synth_corpus, tiny_spec, str(tmp_path / "two.json"), "4"],
        capture_output=True,
        text=True,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert a["weights"] == pytest.approx(b["weights"], rel=1e-9)
    for x, y in zip(a["trajectory"], b["trajectory"]):
        for name, score in x["signal"].items():
            assert (score is None) == (y["signal"][name] is None)
            if score is not None:
                assert score == pytest.approx(y["signal"][name], rel=1e-9, abs=1e-12)
