"""DoGE's one-pass per-domain gradients (impl ghost) equal the per-domain loop (impl loop).

float64 models and a float64 loss, so "equal" means to 1e-10: scores, alpha, the applied gradient,
the weights after optimizer steps, with held-out targets, the mixture, accumulation, two processes.
"""

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from mixweight.core.distributed import World
from mixweight.core.model import build_model
from mixweight.data.manifest import load_manifest
from mixweight.data.streams import read_stream
from mixweight.domain import doge, ghost
from mixweight.domain.doge import DoGEObjective, heldout_mix_mask
from mixweight.domain.doge_run import DoGEConfig
from mixweight.domain.ghost import parameter_paths
from mixweight.errors import MixweightError

LLAMA = {
    "model_type": "llama",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "max_position_embeddings": 128,
    "rms_norm_eps": 1e-5,
    "attention_dropout": 0.0,
    "tie_word_embeddings": False,
}


@pytest.fixture(scope="module")
def llama_spec(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("specs") / "llama.json"
    path.write_text(json.dumps(LLAMA))
    return str(path)


@pytest.fixture
def fp64_loss(monkeypatch):
    """per_sample_loss without its cast to float32, so a float64 model stays float64 end to end."""

    def loss(logits, labels):
        token = F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1), reduction="none"
        )
        return token.view(labels.shape[0], -1).mean(dim=1)

    monkeypatch.setattr(doge, "per_sample_loss", loss)


def _batches(corpus, domains, mix_blocks, split=1, seed=0):
    """Blocks of `domains` (not in the held-out mixture), then `mix_blocks` that are, in `split` micro-batches."""
    manifest = load_manifest(corpus)
    blocks = {
        d: torch.from_numpy(read_stream(manifest.stream_dir(corpus, "train", name), limit=64))
        for d, name in enumerate(manifest.domains)
    }
    in_mix = {d: heldout_mix_mask(b, len(manifest.domains) + 1) for d, b in blocks.items()}
    g = torch.Generator().manual_seed(seed)
    rows, ids = [], []
    for d in domains:
        plain = blocks[d][~in_mix[d]]
        rows.append(plain[torch.randint(len(plain), (1,), generator=g)].squeeze(0))
        ids.append(d)
    for i in range(mix_blocks):
        rows.append(blocks[i][in_mix[i]][0])
        ids.append(i)
    order = torch.randperm(len(ids), generator=g)  # domains interleaved, as the sampler gives them
    batch = {"input_ids": torch.stack(rows)[order], "domain": torch.tensor(ids)[order]}
    size = -(-len(ids) // split)
    return manifest, [{k: v[i : i + size] for k, v in batch.items()} for i in range(0, len(ids), size)]


def _run(spec, manifest, steps_batches, impl, steps=2, **objective_args):
    """`steps` optimizer steps (AdamW) of a float64 model; every step's metrics, the grads and the weights."""
    model = build_model(spec, manifest, seed=0).double()
    objective = DoGEObjective(manifest.domains, mu=0.01, impl=impl, **objective_args)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    logged, results = [], []
    for step in range(steps):
        results.append(objective.compute_gradients(model, steps_batches, step, World(), None, lr=0.05))
        logged.append(objective.step_metrics()["doge"])
        grads = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    weights = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    return {"logged": logged, "results": results, "grads": grads, "weights": weights, "objective": objective}


def _assert_equal_runs(a, b, tol=1e-10):
    for la, lb in zip(a["logged"], b["logged"]):
        assert la["updated"] == lb["updated"]
        for name, score in la["scores"].items():
            assert (score is None) == (lb["scores"][name] is None)
            if score is not None:
                assert score == pytest.approx(lb["scores"][name], rel=tol, abs=tol)
    assert a["objective"].last_weights() == pytest.approx(b["objective"].last_weights(), rel=tol, abs=1e-14)
    torch.testing.assert_close(a["grads"], b["grads"], rtol=tol, atol=tol * a["grads"].abs().max().item())
    torch.testing.assert_close(a["weights"], b["weights"], rtol=tol, atol=tol)
    for ra, rb in zip(a["results"], b["results"]):
        torch.testing.assert_close(ra.weights, rb.weights, rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(ra.losses, rb.losses, rtol=1e-6, atol=1e-9)  # float32 records


DOMAINS = [0, 0, 0, 1, 2, 3, 5, 6, 6]  # domain 0 three times, domain 4 absent
CASES = [
    ("gpt2", "mix", "reference", 0.05),
    ("gpt2", "all", "paper", 0.0),
    ("gpt2", "copy,arithmetic", "paper", 0.0),
    ("llama", "mix", "reference", 0.05),
    ("llama", "copy,arithmetic", "reference", 0.05),
]


@pytest.mark.parametrize("arch, target, score, clip", CASES)
def test_ghost_equals_loop_in_float64(synth_corpus, tiny_spec, llama_spec, fp64_loss, arch, target, score, clip):
    spec = tiny_spec if arch == "gpt2" else llama_spec
    manifest, batches = _batches(synth_corpus, DOMAINS, mix_blocks=2 if target == "mix" else 0)
    args = {"target": target, "score": score, "max_grad_norm": clip}
    loop = _run(spec, manifest, batches, "loop", **args)
    fast = _run(spec, manifest, batches, "ghost", **args)
    assert all(entry["updated"] for entry in loop["logged"])
    scores = {s for entry in loop["logged"] for s in entry["scores"].values() if s is not None}
    assert max(scores) > 0 and len(scores) >= 2  # the scores are not degenerate
    if clip:
        assert loop["objective"]._rows is None and fast["objective"]._rows.fallback == set()  # nothing fell back
    _assert_equal_runs(fast, loop)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_ghost_with_accumulation_equals_loop_with_one_micro_batch(synth_corpus, tiny_spec, llama_spec, fp64_loss, arch):
    spec = tiny_spec if arch == "gpt2" else llama_spec
    manifest, whole = _batches(synth_corpus, DOMAINS, mix_blocks=2, seed=1)
    _, three = _batches(synth_corpus, DOMAINS, mix_blocks=2, split=3, seed=1)
    assert len(three) == 3
    args = {"target": "mix", "score": "reference", "max_grad_norm": 0.05}
    _assert_equal_runs(_run(spec, manifest, three, "ghost", **args), _run(spec, manifest, whole, "loop", **args))


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_ghost_under_bf16_autocast_tracks_loop_and_passes_the_check(synth_corpus, tiny_spec, llama_spec, arch):
    """bf16 matmuls differ in rounding (autograd's weight gradients are bf16 GEMMs, the rows' float32 ones)."""
    spec = tiny_spec if arch == "gpt2" else llama_spec
    manifest, batches = _batches(synth_corpus, DOMAINS, mix_blocks=2)
    runs = {}
    for impl in ("loop", "ghost"):
        model = build_model(spec, manifest, seed=0)
        objective = DoGEObjective(manifest.domains, "mix", mu=0.01, max_grad_norm=0.05, impl=impl)
        objective.compute_gradients(model, batches, 0, World(), torch.autocast("cpu", dtype=torch.bfloat16), 0.05)
        runs[impl] = (torch.cat([p.grad.reshape(-1) for p in model.parameters()]), objective)
    (loop, _), (fast, objective) = runs["loop"], runs["ghost"]
    assert (fast - loop).norm() < 2e-2 * loop.norm()
    assert objective._rows.verified and objective._rows.fallback == set()  # bf16 rounding is not a failed check


def test_every_parameter_of_gpt2_and_llama_takes_the_one_pass_path(synth_corpus, tiny_spec, llama_spec):
    manifest = load_manifest(synth_corpus)
    gpt2 = parameter_paths(build_model(tiny_spec, manifest, seed=0))
    assert gpt2["transformer.wte.weight"] == "embedding+linear"  # tied with lm_head: one row, two modules
    assert gpt2["transformer.h.0.attn.c_attn.weight"] == "conv1d" and gpt2["transformer.ln_f.bias"] == "layernorm"
    llama = parameter_paths(build_model(llama_spec, manifest, seed=0))
    assert llama["model.norm.weight"] == "rmsnorm" and llama["lm_head.weight"] == "linear"
    assert "per-domain backward" not in set(gpt2.values()) | set(llama.values())


def test_uncovered_layers_take_the_per_domain_backward(synth_corpus, tiny_spec, fp64_loss, monkeypatch):
    real_kind = ghost._kind
    monkeypatch.setattr(ghost, "_kind", lambda m: None if isinstance(m, torch.nn.LayerNorm) else real_kind(m))
    manifest, batches = _batches(synth_corpus, DOMAINS, mix_blocks=2)
    paths = parameter_paths(build_model(tiny_spec, manifest, seed=0))
    assert (
        paths["transformer.ln_f.weight"] == "per-domain backward"
        and paths["transformer.h.0.mlp.c_fc.weight"] == "conv1d"
    )
    args = {"target": "mix", "score": "reference", "max_grad_norm": 0.05}
    fast = _run(tiny_spec, manifest, batches, "ghost", **args)
    assert len(fast["objective"]._rows.fallback) == (2 * 2 + 1) * 2  # ln_1, ln_2 per layer, ln_f: weight, bias
    _assert_equal_runs(fast, _run(tiny_spec, manifest, batches, "loop", **args))


def test_the_first_step_check_moves_a_wrong_layer_to_the_per_domain_backward(
    synth_corpus, tiny_spec, fp64_loss, monkeypatch
):
    """A layer whose rows come out wrong (as for a model using a weight outside its module) is caught and redone."""
    real_add = ghost.DomainRows._add

    def drop_layernorm(self, rec, g):
        if rec["kind"] != "layernorm":
            real_add(self, rec, g)

    monkeypatch.setattr(ghost.DomainRows, "_add", drop_layernorm)
    manifest, batches = _batches(synth_corpus, DOMAINS, mix_blocks=2)
    args = {"target": "mix", "score": "reference", "max_grad_norm": 0.05}
    fast = _run(tiny_spec, manifest, batches, "ghost", **args)
    model = build_model(tiny_spec, manifest, seed=0)
    layernorm = {id(p) for m in model.modules() if isinstance(m, torch.nn.LayerNorm) for p in m.parameters()}
    assert len(fast["objective"]._rows.fallback) == len(layernorm) == 10
    _assert_equal_runs(fast, _run(tiny_spec, manifest, batches, "loop", **args))


def test_a_bad_impl_is_refused():
    with pytest.raises(MixweightError, match="'doge_impl' must be one of ghost, loop, got 'fast'"):
        DoGEConfig(data="d", out="o", doge_impl="fast").validate()


# float64 proxies: 1 and 2 processes sum in other orders, which Adam amplifies in float32 by a CPU-dependent
# amount (test_train_weighting's EXACT_ATOL note); float64 runs agree to ~2e-15 relative (measured)
TWO_RANK_SCRIPT = """
import sys
import torch
torch.set_default_dtype(torch.float64)
from mixweight.domain.doge_run import DoGEConfig, run_doge
corpus, spec, out, batch, impl = sys.argv[1:6]
run_doge(DoGEConfig(data=corpus, out=out, proxy=spec, steps=3, batch_size=int(batch), lr=3e-3, final_lr=3e-4,
                    warmup_steps=1, log_every=1, progress=False, doge_impl=impl))
"""


@pytest.mark.distributed
def test_ghost_on_two_processes_equals_loop_on_one(synth_corpus, tiny_spec, tmp_path, free_port):
    script = tmp_path / "doge_run.py"
    script.write_text(TWO_RANK_SCRIPT)
    one = subprocess.run(
        [sys.executable, str(script), synth_corpus, tiny_spec, str(tmp_path / "one.json"), "8", "loop"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}"]
    two = subprocess.run(
        [*torchrun, str(script), synth_corpus, tiny_spec, str(tmp_path / "two.json"), "4", "ghost"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert a["weights"] == pytest.approx(b["weights"], rel=1e-9)
    compared = 0
    for x, y in zip(a["trajectory"], b["trajectory"], strict=True):
        for name, score in x["signal"].items():
            assert (score is None) == (y["signal"][name] is None)
            if score is not None:
                assert score == pytest.approx(y["signal"][name], rel=1e-9, abs=1e-12)
                compared += 1
    assert compared >= 6
