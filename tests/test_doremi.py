"""DoReMi: the update rule, the proxy reduction, and end-to-end weights on the synthetic corpus."""

import dataclasses
import json
import math
import shutil
import warnings

import pytest
import torch

import mixweight.train.loop as loop
from mixweight.core.artifact import load_domain_weights
from mixweight.core.model import build_model
from mixweight.data.manifest import load_manifest
from mixweight.data.synthetic import write_synthetic_corpus
from mixweight.domain.doremi import DoReMiWeighting, doremi_update, per_token_losses, proxy_loss_weights
from mixweight.domain.doremi_run import DoReMiConfig, run_doremi
from mixweight.errors import MixweightError
from mixweight.train.config import TrainConfig

DOMAINS = ["a", "b", "c"]
LEARNABLE = ["unigram", "markov1", "markov2", "arithmetic", "copy"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread is ~10x faster than oversubscribing."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- the update rule -------------------------------------------------------------------------------
def test_update_rule_matches_a_hand_computation():
    alpha = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    excess = torch.tensor([0.1, 0.0, 2.0], dtype=torch.float64)
    eta, c = 0.5, 0.01
    logits = [math.log(0.5) + 0.05, math.log(0.3), math.log(0.2) + 1.0]
    z = sum(math.exp(v) for v in logits)
    expected = [(1 - c) * math.exp(v) / z + c / 3 for v in logits]
    got = doremi_update(alpha, excess, eta, c)
    assert got.tolist() == pytest.approx(expected, rel=1e-12)


def test_update_rule_keeps_a_floor_and_sums_to_one():
    alpha = torch.full((4,), 0.25, dtype=torch.float64)
    for _ in range(50):
        alpha = doremi_update(alpha, torch.tensor([30.0, 0.0, 0.0, 0.0], dtype=torch.float64), 1.0, 1e-3)
        assert alpha.sum().item() == pytest.approx(1.0, abs=1e-12)
        assert (alpha >= 1e-3 / 4 - 1e-15).all()
    assert alpha[0] > 0.99


# --- the reduction on hand-made signals ---------------------------------------------------------------
def _reduction(**kwargs):
    return DoReMiWeighting(None, DOMAINS, **{"eta": 1.0, "smoothing": 1e-3, "log_every": 1, **kwargs})


def test_lambda_is_the_token_average_excess_of_each_domain():
    reduction = _reduction()
    domains = torch.tensor([0, 0, 1, 2])
    signal = torch.tensor([[6.0, 10.0], [1.0, 5.0], [2.0, 4.0], [0.0, 8.0]])  # [excess sum, tokens]
    weights = reduction.weights(torch.ones(4), domains, step=0, signal=signal)
    assert reduction.excess.tolist() == pytest.approx([7 / 15, 0.5, 0.0])
    expected_alpha = doremi_update(torch.full((3,), 1 / 3, dtype=torch.float64), reduction.excess, 1.0, 1e-3)
    assert reduction.alpha.tolist() == pytest.approx(expected_alpha.tolist())
    # paper objective: alpha[d] * n_s / (tokens of domain d); all domains present -> sums to 1
    a = expected_alpha.tolist()
    assert weights.tolist() == pytest.approx([a[0] * 10 / 15, a[0] * 5 / 15, a[1], a[2]], rel=1e-6)
    assert weights.sum().item() == pytest.approx(1.0, abs=1e-6)
    metrics = reduction.step_metrics()
    assert metrics["excess_loss"]["a"] == pytest.approx(7 / 15) and set(metrics["domain_weights"]) == set(DOMAINS)


def test_an_absent_domain_keeps_its_lambda_and_alpha_is_renormalized_over_present_domains():
    reduction = _reduction()
    reduction.weights(torch.ones(3), torch.tensor([0, 1, 2]), 0, torch.tensor([[1.0, 2.0], [4.0, 2.0], [2.0, 2.0]]))
    assert reduction.excess.tolist() == pytest.approx([0.5, 2.0, 1.0])
    # equal-length samples, domain 2 absent: weight alpha'[d] / n_d with alpha' over {a, b}
    weights = reduction.weights(
        torch.ones(3), torch.tensor([0, 0, 1]), 1, torch.tensor([[0.0, 2.0], [2.0, 2.0], [0.0, 2.0]])
    )
    assert reduction.excess.tolist() == pytest.approx([0.5, 0.0, 1.0])  # c keeps 1.0
    a = reduction.alpha.tolist()
    share_a = a[0] / (a[0] + a[1])
    assert weights.tolist() == pytest.approx([share_a / 2, share_a / 2, 1 - share_a], rel=1e-6)
    assert reduction.missing == [0, 0, 1]


def test_token_objective_is_a_token_weighted_mean_with_weights_alpha():
    alpha = torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64)
    domains = torch.tensor([0, 1, 1, 2])
    counts = torch.tensor([10.0, 10.0, 5.0, 20.0], dtype=torch.float64)
    valid = torch.ones(4, dtype=torch.bool)
    got = proxy_loss_weights(alpha, domains, counts, valid, "token")
    v = torch.tensor([0.6 * 10, 0.3 * 10, 0.3 * 5, 0.1 * 20])
    assert got.tolist() == pytest.approx((v / v.sum()).tolist())
    # sum_s w_s * mean_loss_s == sum_tok alpha[d] l_tok / sum_tok alpha[d]
    token_sums = torch.tensor([3.0, 5.0, 1.0, 8.0], dtype=torch.float64)
    direct = (alpha[domains] * token_sums).sum() / (alpha[domains] * counts).sum()
    assert (got * token_sums / counts).sum().item() == pytest.approx(direct.item())


def test_non_finite_samples_get_zero_weight_and_no_say_in_lambda():
    reduction = _reduction()
    losses = torch.tensor([1.0, float("nan"), 1.0])
    weights = reduction.weights(losses, torch.tensor([0, 1, 2]), 0, torch.tensor([[1.0, 1.0], [9.0, 1.0], [1.0, 1.0]]))
    assert weights[1] == 0 and weights.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert reduction.excess[1] == 0.0


def test_state_round_trip_gives_identical_weights():
    torch.manual_seed(0)
    steps = [(torch.randint(0, 3, (6,)), torch.rand(6, 2) + 0.5) for _ in range(8)]
    straight, resumed = _reduction(log_every=2), _reduction(log_every=2)
    for step, (domains, signal) in enumerate(steps[:5]):
        straight.weights(torch.ones(6), domains, step, signal)
        resumed.weights(torch.ones(6), domains, step, signal)
    restored = _reduction(log_every=2)
    restored.load_state_dict(json.loads(json.dumps(resumed.state_dict())))
    for step, (domains, signal) in enumerate(steps[5:], start=5):
        a = straight.weights(torch.ones(6), domains, step, signal)
        b = restored.weights(torch.ones(6), domains, step, signal)
        assert torch.equal(a, b)
    assert straight.state_dict() == restored.state_dict()
    assert straight.average_weights() == restored.average_weights()
    assert [e["step"] for e in straight.trajectory] == [2, 4, 6, 8]


def test_missing_domains_warn_once():
    reduction = _reduction()
    with pytest.warns(UserWarning, match=r"\['c'\].*too small for 3 domains"):
        for step in range(25):
            reduction.weights(torch.ones(2), torch.tensor([0, 1]), step, torch.ones(2, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reduction.weights(torch.ones(2), torch.tensor([0, 1]), 25, torch.ones(2, 2))


def test_sample_signal_is_the_clipped_excess_over_the_reference(synth_corpus, tiny_spec):
    manifest = load_manifest(synth_corpus)
    proxy, reference = build_model(tiny_spec, manifest, seed=0), build_model(tiny_spec, manifest, seed=1)
    input_ids = torch.randint(0, 256, (3, 12))
    input_ids[1, 5:] = -100  # ignored tail (labels only; the embedding never sees it in real batches)
    safe = input_ids.clamp(min=0)
    with torch.no_grad():
        proxy_logits = proxy(input_ids=safe).logits
        ref_logits = reference(input_ids=safe).logits
    reduction = DoReMiWeighting(reference, manifest.domains)
    reduction.reference.forward = lambda input_ids: type("Out", (), {"logits": ref_logits})()
    signal = reduction.sample_signal(input_ids, *per_token_losses(proxy_logits, input_ids))
    lp, mask = per_token_losses(proxy_logits, input_ids)
    lr, _ = per_token_losses(ref_logits, input_ids)
    for s in range(3):
        expected = sum(max(lp[s, t].item() - lr[s, t].item(), 0.0) for t in range(11) if mask[s, t])
        assert signal[s, 0].item() == pytest.approx(expected, rel=1e-5)
    assert signal[:, 1].tolist() == [11, 4, 11]


# --- end to end on the synthetic corpus ---------------------------------------------------------------
OPTIONS = {f.name for f in dataclasses.fields(DoReMiConfig)}


def _config(corpus, spec, out, **overrides) -> DoReMiConfig:
    """The nested form: DoReMi's options, and a train block for any other key (lr, checkpoint_every, ...)."""
    values = dict(data=corpus, out=str(out), proxy=spec, steps=60, log_every=10)
    train = dict(batch_size=32, lr=3e-3, final_lr=3e-4, warmup_steps=5, checkpoint_every=1000, progress=False)
    for key, value in overrides.items():
        (values if key in OPTIONS else train)[key] = value
    return DoReMiConfig(**values, train=train)


@pytest.fixture(scope="module")
def doremi_run(synth_corpus, tiny_spec, tmp_path_factory):
    out = tmp_path_factory.mktemp("doremi") / "weights.json"
    return run_doremi(_config(synth_corpus, tiny_spec, out)), out


def test_doremi_downweights_noise_and_redundant_domains(doremi_run):
    weights, out = doremi_run
    w = weights.as_dict()
    assert sum(weights.weights) == pytest.approx(1.0)
    assert w["noise"] < 0.5 / 7 and w["redundant"] < 0.5 / 7
    assert sum(w[d] for d in LEARNABLE) > 5 / 7 + 0.1
    assert min(weights.weights) >= 1e-3 / 7
    written = load_domain_weights(out)
    assert written.weights == pytest.approx(weights.weights)
    assert written.method["name"] == "doremi" and written.method["rounds_history"][0]["l1_to_previous"] is None
    assert [e["step"] for e in written.trajectory] == [10, 20, 30, 40, 50, 60]
    assert len(written.trajectory[-1]["signal"]) == 7
    assert written.provenance["domain_token_counts"]["noise"] > 0 and written.provenance["config_hash"]
    # the FLOPs of the runs that made the weights: the reference run and the proxy, whose step adds a reference forward
    work = out.with_name("weights.work") / "round-0"
    runs = {name: json.loads((work / name / "eval.json").read_text())["compute"] for name in ("reference", "proxy")}
    assert written.compute["runs"] == {f"round-0/{n}": runs[n]["flops"] for n in runs}
    assert written.compute["flops"] == pytest.approx(runs["reference"]["flops"] + runs["proxy"]["flops"], rel=1e-12)
    extra = runs["proxy"]["extra_flops_per_step"]["reference_forward"]
    assert extra == pytest.approx(runs["proxy"]["model_flops_per_step"] / 3, rel=1e-12)  # the same model, forward only
    for suffix in ("_trajectory.png", "_bars.png"):
        png = out.with_name(f"weights{suffix}")
        assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"


def test_same_seed_and_config_give_the_same_bytes(synth_corpus, tiny_spec, tmp_path):
    first, again = tmp_path / "weights.json", tmp_path / "elsewhere" / "weights.json"
    for out in (first, again):
        run_doremi(_config(synth_corpus, tiny_spec, out, steps=8, log_every=4))
    assert again.read_bytes() == first.read_bytes()
    other_seed = tmp_path / "seed1.json"
    run_doremi(_config(synth_corpus, tiny_spec, other_seed, steps=8, log_every=4, seed=1))
    assert other_seed.read_bytes() != first.read_bytes()


def test_an_interrupted_proxy_resumes_to_the_same_weights(synth_corpus, tiny_spec, tmp_path, crash_at_step):
    small = dict(steps=20, checkpoint_every=10, log_every=5)
    run_doremi(_config(synth_corpus, tiny_spec, tmp_path / "straight.json", **small))
    out = tmp_path / "resumed" / "w.json"
    in_the_proxy = lambda objective: isinstance(objective.weighting, DoReMiWeighting)  # noqa: E731
    with crash_at_step(13, when=in_the_proxy), pytest.raises(KeyboardInterrupt):
        run_doremi(_config(synth_corpus, tiny_spec, out, **small))
    assert not out.exists()
    run_doremi(_config(synth_corpus, tiny_spec, out, **small))
    assert out.read_bytes() == (tmp_path / "straight.json").read_bytes()


def test_two_rounds_record_history_and_distance(synth_corpus, tiny_spec, tmp_path):
    weights = run_doremi(_config(synth_corpus, tiny_spec, tmp_path / "w.json", steps=6, rounds=2, log_every=3))
    history = weights.method["rounds_history"]
    assert [h["round"] for h in history] == [1, 2]
    l1 = sum(abs(history[1]["weights"][d] - history[0]["weights"][d]) for d in weights.domains)
    assert history[1]["l1_to_previous"] == pytest.approx(l1)
    assert weights.as_dict() == pytest.approx(history[1]["weights"])
    saved = (tmp_path / "w.work" / "round-1" / "reference" / "config.yaml").read_text()
    assert "round-0/weights.json" in saved


# --- bad input ---------------------------------------------------------------------------------------
def test_a_reference_trained_on_another_corpus_is_refused(synth_corpus, tiny_spec, tmp_path):
    other = tmp_path / "other-corpus"
    write_synthetic_corpus(other, seed=1, tokens_per_domain=2048, seq_len=64)
    run = tmp_path / "ref"
    loop.train(
        TrainConfig(
            data=str(other),
            out=str(run),
            model=tiny_spec,
            steps=2,
            batch_size=8,
            warmup_steps=1,
            eval_every=0,
            eval_blocks=2,
            progress=False,
        )
    )
    with pytest.raises(MixweightError, match=rf"trained on corpus {other}.*reads corpus {synth_corpus}"):
        run_doremi(_config(synth_corpus, tiny_spec, tmp_path / "w.json", reference=str(run)))


def test_a_reference_with_another_vocabulary_is_refused(doremi_run, synth_corpus, tiny_spec, tmp_path):
    _, out = doremi_run
    run = tmp_path / "ref"
    shutil.copytree(out.with_name("weights.work") / "round-0" / "reference", run)
    model_config = next(run.glob("checkpoints/step-*/model/config.json"))
    model_config.write_text(json.dumps({**json.loads(model_config.read_text()), "vocab_size": 512}))
    with pytest.raises(MixweightError, match="vocab_size 512.*has 256"):
        run_doremi(_config(synth_corpus, tiny_spec, tmp_path / "w.json", reference=str(run)))


@pytest.mark.parametrize(
    "weights, message",
    [
        ({"redundant": 0.5, "noise": 0.5}, r"missing for corpus domains: \['unigram'"),
        (
            {
                "redundant": -0.1,
                "noise": 0.2,
                "unigram": 0.1,
                "markov1": 0.2,
                "markov2": 0.2,
                "arithmetic": 0.2,
                "copy": 0.2,
            },
            "weight of 'redundant' is -0.1",
        ),
        (
            {
                "redundant": float("nan"),
                "noise": 0.2,
                "unigram": 0.2,
                "markov1": 0.2,
                "markov2": 0.2,
                "arithmetic": 0.1,
                "copy": 0.1,
            },
            "weight of 'redundant' is nan",
        ),
    ],
)
def test_a_bad_reference_weights_file_is_refused_before_training(synth_corpus, tiny_spec, tmp_path, weights, message):
    path = tmp_path / "ref_weights.json"
    path.write_text(json.dumps({"weights": weights}))
    with pytest.raises(MixweightError, match=message):
        run_doremi(_config(synth_corpus, tiny_spec, tmp_path / "w.json", reference_weights=str(path)))
    assert not (tmp_path / "w.work" / "round-0").exists()


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"proxy_loss": "tokens"}, "proxy_loss' must be one of paper, token"),
        ({"reference_weights": "natrual"}, "reference_weights' must be natural, uniform or a weights JSON file"),
        ({"eta": 0.0}, "'eta' must be > 0"),
        ({"smoothing": 1.0}, r"'smoothing' must be in \[0, 1\)"),
        ({"rounds": 0}, "'rounds' must be a positive integer"),
    ],
)
def test_config_validation(overrides, message):
    with pytest.raises(MixweightError, match=message):
        _config("corpus", "spec", "w.json", **overrides).validate()


def test_the_train_block_is_checked_by_train_config_rules():
    with pytest.raises(MixweightError, match="weights doremi: the proxy's train block: 'lr' must be > 0, got -1.0"):
        _config("corpus", "spec", "w.json", lr=-1.0).validate()
    with pytest.raises(MixweightError, match="'final_lr' must be in"):
        _config("corpus", "spec", "w.json", final_lr=1.0).validate()


def test_a_changed_option_or_train_key_is_refused_naming_it(synth_corpus, tiny_spec, tmp_path, capsys):
    small = dict(steps=3, reference_steps=2, log_every=1)
    first = run_doremi(_config(synth_corpus, tiny_spec, tmp_path / "w.json", **small))
    capsys.readouterr()
    again = run_doremi(_config(synth_corpus, tiny_spec, tmp_path / "w.json", **small))  # reused: nothing trained
    assert "mixweight train:" not in capsys.readouterr().out and again.weights == first.weights
    with pytest.raises(MixweightError, match=r"w.work: holds doremi proxy runs made with a different config \(eta: "):
        run_doremi(_config(synth_corpus, tiny_spec, tmp_path / "w.json", eta=0.5, **small))
    with pytest.raises(
        MixweightError, match=r"reference: a finished run with a different config \(weight_decay: 0.1 ->"
    ):
        run_doremi(_config(synth_corpus, tiny_spec, tmp_path / "w.json", weight_decay=0.0, **small))


def test_the_old_spelling_objective_is_read_as_proxy_loss_for_a_release(tmp_path, capsys):
    """`objective` named DoReMi's proxy loss before 0.2; flags, YAML and a work directory's record still read it."""
    from mixweight.cli import build_parser
    from mixweight.cli.flags import overrides
    from mixweight.core.config import held_deprecations, load_config
    from mixweight.domain.proxy import claim_work_dir

    args = build_parser().parse_args(["weights", "doremi", "--data", "c", "--out", str(tmp_path / "w.json"),
                                      "--objective", "token"])  # fmt: skip
    with held_deprecations():
        config = load_config(DoReMiConfig, None, overrides(args, DoReMiConfig), DoReMiConfig.COMMAND)
    assert config.proxy_loss == "token"
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x]
    assert "deprecated" in line and "objective -> proxy_loss" in line
    weights = build_parser()._subparsers._group_actions[0].choices["weights"]
    doremi_help = weights._subparsers._group_actions[0].choices["doremi"].format_help()
    assert "--proxy-loss" in doremi_help and "--objective" not in doremi_help  # one spelling in --help
    with pytest.raises(MixweightError, match="'objective' \\(deprecated\\) and 'proxy_loss' both given"):
        load_config(DoReMiConfig, None, {"objective": "token", "proxy_loss": "paper"})
    work = tmp_path / "w.work"
    work.mkdir()
    (work / "doremi_config.yaml").write_text("objective: token\n")  # the record an older mixweight wrote
    claim_work_dir(dataclasses.replace(config, data="c"))  # the same config: accepted, no line
    (work / "doremi_config.yaml").write_text("objective: paper\n")
    with pytest.raises(MixweightError, match="proxy_loss: 'paper' -> 'token'"):
        claim_work_dir(dataclasses.replace(config, data="c"))
    assert capsys.readouterr().err == ""
