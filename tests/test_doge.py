"""DoGE: the score and update formulas, the per-domain gradients, and the proxy run's artifact."""

import json
import math
import subprocess
import sys

import pytest
import torch

from mixweight.data.manifest import load_manifest
from mixweight.data.streams import read_stream
from mixweight.domain.artifact import load_domain_weights
from mixweight.domain.doge import DoGEObjective, doge_scores, doge_update
from mixweight.domain.doge_run import DoGEConfig, run_doge
from mixweight.errors import MixweightError
from mixweight.train.checkpoint import list_checkpoints
from mixweight.train.distributed import World
from mixweight.train.loss import per_sample_loss
from mixweight.train.model import build_model

# --- pure pieces -------------------------------------------------------------------------


def test_universal_scores_exclude_the_self_term():
    grads = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    # s_i = <g_i, sum_{j != i} g_j>: <[1,0],[1,3]> = 1, <[0,2],[2,1]> = 2, <[1,1],[1,2]> = 3
    torch.testing.assert_close(doge_scores(grads, "all"), torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))


def test_out_of_domain_scores_use_the_mean_target_gradient():
    grads = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    targets = torch.tensor([[2.0, 0.0], [0.0, 2.0], [9.0, 9.0]])
    # g_target = mean of rows 0 and 1 = [1, 1]
    torch.testing.assert_close(doge_scores(grads, [0, 1], target_grads=targets),
                               torch.tensor([1.0, 2.0, 2.0], dtype=torch.float64))


def test_normalized_clipped_scores_divide_by_the_mean_norm_and_clip_to_0_5():
    grads = torch.tensor([[3.0, 0.0], [-1.0, 0.0], [10.0, 0.0]])
    # raw: <[3],[9]> = 27, <[-1],[13]> = -13, <[10],[2]> = 20; mean norm (3 + 1 + 10) / 3 = 14/3
    expected = torch.tensor([min(27 * 3 / 14, 5.0), 0.0, 20 * 3 / 14], dtype=torch.float64)
    got = doge_scores(grads, "all", score="normalized-clipped", lr=0.1)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)


def test_update_matches_hand_computed_values_and_sums_to_one():
    alpha = torch.tensor([0.5, 0.25, 0.25])
    scores = torch.tensor([1.0, 0.0, -1.0])
    got = doge_update(alpha, scores, lr=0.1, mu=0.05)  # exponent lr * s / mu = 2 s
    raw = torch.tensor([0.5 * math.e**2, 0.25, 0.25 * math.e**-2], dtype=torch.float64)
    torch.testing.assert_close(got, raw / raw.sum())
    assert got.sum().item() == pytest.approx(1.0, abs=1e-12)


def test_update_keeps_absent_domains_and_is_stable_for_huge_scores():
    alpha = torch.tensor([0.5, 0.25, 0.25])
    got = doge_update(alpha, torch.tensor([1e6, 123.0, -1e6]), lr=1.0, mu=0.01, present=torch.tensor([True, False, True]))
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, torch.tensor([0.75, 0.25, 0.0], dtype=torch.float64))


def test_bad_score_name_is_refused():
    with pytest.raises(MixweightError, match="normalized-clipped"):
        doge_scores(torch.ones(2, 3), "all", score="cosine")


# --- the objective's gradients ---------------------------------------------------------------


def _batch(corpus, domains):
    manifest = load_manifest(corpus)
    blocks = {d: torch.from_numpy(read_stream(manifest.stream_dir(corpus, "train", name), limit=4))
              for d, name in enumerate(manifest.domains)}
    used = {d: 0 for d in blocks}
    rows = []
    for d in domains:
        rows.append(blocks[d][used[d]])
        used[d] += 1
    return manifest, {"input_ids": torch.stack(rows), "domain": torch.tensor(domains)}


def _flat_grad(model):
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


def _direct_domain_grads(model, batch, ids):
    """g_i by autograd on the mean loss of domain i's samples, without the objective."""
    out = []
    for d in ids:
        x = batch["input_ids"][batch["domain"] == d]
        loss = per_sample_loss(model(input_ids=x).logits, x).mean()
        out.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(model.parameters()))]))
    return torch.stack(out)


DOMAINS_OF_8 = [0, 0, 0, 1, 2, 3, 5, 6]  # domain 0 three times, domain 4 absent


@pytest.mark.parametrize("targets", [None, ["copy"]])
def test_domain_gradients_are_mean_loss_gradients_and_the_applied_gradient_mixes_them(synth_corpus, tiny_spec, targets):
    manifest, batch = _batch(synth_corpus, DOMAINS_OF_8)
    model = build_model(tiny_spec, manifest, seed=0)
    objective = DoGEObjective(manifest.domains, targets, mu=0.01)
    lr = 0.05
    result = objective.compute_gradients(model, [batch], step=0, world=World(), autocast=None, lr=lr)

    train_ids = [d for d in range(7) if d != 4 and (targets is None or d != 6)]
    grads = _direct_domain_grads(model, batch, train_ids)
    if targets is None:
        scores = doge_scores(grads, "all")
    else:
        scores = doge_scores(grads, [0], target_grads=_direct_domain_grads(model, batch, [6]))
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
    torch.testing.assert_close(torch.tensor(objective.last_weights(), dtype=torch.float64), expected_alpha, rtol=1e-5, atol=1e-8)

    mix = expected_alpha[present] / expected_alpha[present].sum()
    torch.testing.assert_close(_flat_grad(model), (mix.float() @ grads), rtol=1e-4, atol=1e-7)
    assert result.weights.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert (result.weights[batch["domain"] == 6] == 0).all() if targets else True
    assert result.losses.isfinite().all()


def test_one_micro_batch_of_8_equals_two_of_4(synth_corpus, tiny_spec):
    manifest, batch = _batch(synth_corpus, [0, 1, 2, 3, 4, 5, 6, 2])
    runs = []
    for split in ([batch], [{k: v[:4] for k, v in batch.items()}, {k: v[4:] for k, v in batch.items()}]):
        model = build_model(tiny_spec, manifest, seed=0)
        objective = DoGEObjective(manifest.domains, mu=0.01)
        result = objective.compute_gradients(model, split, step=0, world=World(), autocast=None, lr=0.05)
        runs.append((objective.step_metrics()["doge"], objective.last_weights(), _flat_grad(model), result))
    (m1, a1, g1, r1), (m2, a2, g2, r2) = runs
    for name in manifest.domains:
        assert m1["scores"][name] == pytest.approx(m2["scores"][name], rel=1e-4, abs=1e-7)
    torch.testing.assert_close(torch.tensor(a1), torch.tensor(a2), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(r1.weights, r2.weights)


# --- the proxy run ---------------------------------------------------------------------------


def _config(corpus, spec, out, **overrides) -> DoGEConfig:
    values = dict(data=corpus, out=str(out), proxy=spec, steps=6, batch_size=8, lr=3e-3, final_lr=3e-4,
                  warmup_steps=2, checkpoint_every=100, log_every=2, progress=False)
    values.update(overrides)
    return DoGEConfig(**values)


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
    assert raw["method"] == {"name": "doge", "mu": 0.01, "score": "paper", "target": "all", "steps": 6}
    assert [e["step"] for e in raw["trajectory"]] == [2, 4, 6]
    assert set(raw["provenance"]) >= {"seed", "config_hash", "proxy", "tokenizer_fingerprint", "domain_token_counts",
                                      "mixweight_version"}
    assert (tmp_path / "a" / "weights.work" / "proxy" / "metrics.jsonl").is_file()


def test_out_of_domain_target_is_not_weighted(synth_corpus, tiny_spec, tmp_path):
    weights = run_doge(_config(synth_corpus, tiny_spec, tmp_path / "w.json", steps=3, target="copy",
                               mu=0.05, score="normalized-clipped"))
    assert weights.domains == [d for d in load_manifest(synth_corpus).domains if d != "copy"]
    assert sum(weights.weights) == pytest.approx(1.0, abs=1e-9)


def test_resume_after_a_crash_gives_the_same_weights(synth_corpus, tiny_spec, tmp_path, monkeypatch):
    run_doge(_config(synth_corpus, tiny_spec, tmp_path / "straight.json", checkpoint_every=4))
    real_step = DoGEObjective.compute_gradients

    def crash_at_step_5(self, model, micro_batches, step, *args):
        if step == 5:
            raise KeyboardInterrupt("simulated crash")
        return real_step(self, model, micro_batches, step, *args)

    monkeypatch.setattr(DoGEObjective, "compute_gradients", crash_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        run_doge(_config(synth_corpus, tiny_spec, tmp_path / "resumed.json", checkpoint_every=4))
    assert not (tmp_path / "resumed.json").exists()
    assert [s for s, _ in list_checkpoints(tmp_path / "resumed.work" / "proxy")] == [4]
    monkeypatch.setattr(DoGEObjective, "compute_gradients", real_step)
    run_doge(_config(synth_corpus, tiny_spec, tmp_path / "resumed.json", checkpoint_every=4))
    assert (tmp_path / "straight.json").read_bytes() == (tmp_path / "resumed.json").read_bytes()


def test_a_work_dir_of_another_config_is_refused(synth_corpus, tiny_spec, tmp_path):
    run_doge(_config(synth_corpus, tiny_spec, tmp_path / "w.json", steps=2))
    with pytest.raises(MixweightError, match="different config"):
        run_doge(_config(synth_corpus, tiny_spec, tmp_path / "w.json", steps=2, mu=0.05))


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


TWO_RANK_SCRIPT = """
import sys
from mixweight.domain.doge_run import DoGEConfig, run_doge
corpus, spec, out, batch = sys.argv[1:5]
run_doge(DoGEConfig(data=corpus, out=out, proxy=spec, steps=3, batch_size=int(batch), lr=3e-3, final_lr=3e-4,
                    warmup_steps=1, log_every=1, progress=False))
"""


@pytest.mark.distributed
def test_two_processes_equal_one_process(synth_corpus, tiny_spec, tmp_path):
    script = tmp_path / "doge_run.py"
    script.write_text(TWO_RANK_SCRIPT)
    one = subprocess.run([sys.executable, str(script), synth_corpus, tiny_spec, str(tmp_path / "one.json"), "8"],
                         capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-3000:]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29531"]
    two = subprocess.run([*torchrun, str(script), synth_corpus, tiny_spec, str(tmp_path / "two.json"), "4"],
                         capture_output=True, text=True)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert a["weights"] == pytest.approx(b["weights"], rel=1e-4)
    for x, y in zip(a["trajectory"], b["trajectory"]):
        for name, score in x["signal"].items():
            assert (score is None) == (y["signal"][name] is None)
            if score is not None:
                assert score == pytest.approx(y["signal"][name], rel=1e-3, abs=1e-6)
