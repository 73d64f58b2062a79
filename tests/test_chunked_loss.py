"""The chunked per-sample loss equals the full-logits one: losses, gradients, DoReMi's excess, the step."""

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

import mixweight.core.chunked_loss as chunked_loss
from mixweight.core.chunked_loss import lm_token_losses, resolve_loss_impl, sample_means
from mixweight.core.distributed import World
from mixweight.core.loss import per_sample_loss, per_token_losses
from mixweight.domain.doremi import DoReMiWeighting
from mixweight.errors import MixweightError
from mixweight.train.config import TrainConfig
from mixweight.train.step import accumulate_gradients
from mixweight.train.step_weighting import SampleWeightingStep
from mixweight.weighting import SampleWeighting

VOCAB = 300
SPECS = {
    "gpt2": dict(
        n_layer=2,
        n_head=2,
        n_embd=32,
        n_positions=64,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        tie_word_embeddings=True,
    ),
    "llama": dict(
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        hidden_size=32,
        intermediate_size=64,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    ),
}


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """7 token rows per chunk: the 3 x 19 shifted rows span 9 chunks, the last one partial."""
    monkeypatch.setattr(chunked_loss, "CHUNK_ELEMENTS", 7 * VOCAB)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    config = AutoConfig.for_model(kind, vocab_size=VOCAB, **SPECS[kind])
    return AutoModelForCausalLM.from_config(config)


def _ids_and_labels():
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, VOCAB, (3, 20), generator=generator)
    labels = input_ids.clone()
    labels[1, 7:] = -100  # an ignored tail
    labels[2, 3] = -100  # an ignored token inside a sequence
    return input_ids, labels


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_chunked_losses_and_gradients_equal_the_full_path(kind):
    model = _model(kind)
    input_ids, labels = _ids_and_labels()
    sample_scale = torch.tensor([1.0, -2.0, 0.5])  # a weighted objective, as the step builds
    results = {}
    for impl in ("full", "chunked"):
        model.zero_grad(set_to_none=True)
        token_losses, mask = lm_token_losses(model, input_ids, impl, labels=labels)
        losses = sample_means(token_losses, mask)
        (losses * sample_scale).sum().backward()
        results[impl] = (token_losses.detach(), mask, losses.detach(), _grads(model))
    full, chunked = results["full"], results["chunked"]
    # Each chunk's cross-entropy is the same kernel on the same rows: equal to the last bit here (asserted at
    # 1e-6 so another BLAS blocking the head matmul differently by row count still passes).
    torch.testing.assert_close(chunked[0], full[0], atol=1e-6, rtol=1e-6)
    assert torch.equal(chunked[1], full[1]) and chunked[1].sum() == 3 * 19 - 13 - 1
    assert (chunked[0][~chunked[1]] == 0).all()  # ignored tokens count 0
    torch.testing.assert_close(chunked[2], full[2], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(full[2], per_sample_loss(model(input_ids=input_ids).logits, labels).detach())
    # Gradients: the output projection's gradient is summed chunk by chunk in fp32 instead of in one matmul:
    # float32 reordering, measured <= 2e-6 on gradients up to ~10 (eps32 x |g| x a few); 1e-5 absolute
    # + 1e-5 relative leaves headroom, while a dropped chunk, a wrong row or a counted ignored token moves
    # gradients by O(|g|) (~0.1-10).
    assert full[3].keys() == chunked[3].keys() and len(full[3]) == len(list(model.parameters()))
    for name in full[3]:
        torch.testing.assert_close(chunked[3][name], full[3][name], atol=1e-5, rtol=1e-5, msg=name)


def test_a_bias_in_the_output_head_gets_its_gradient():
    model = _model("gpt2")
    model.lm_head.bias = torch.nn.Parameter(torch.randn(VOCAB) * 0.1)
    input_ids, labels = _ids_and_labels()
    grads = {}
    for impl in ("full", "chunked"):
        model.zero_grad(set_to_none=True)
        token_losses, mask = lm_token_losses(model, input_ids, impl, labels=labels)
        sample_means(token_losses, mask).sum().backward()
        grads[impl] = model.lm_head.bias.grad.clone()
    torch.testing.assert_close(grads["chunked"], grads["full"], atol=1e-6, rtol=1e-5)
    assert grads["full"].abs().max() > 1e-3


@pytest.mark.parametrize("weighting", ["linupper", "quadratic"])
def test_a_weighted_step_is_the_same_with_either_impl(weighting):
    input_ids, _ = _ids_and_labels()
    batch = {"input_ids": input_ids, "domain": torch.tensor([0, 1, 0])}
    halves = [{k: v[:2] for k, v in batch.items()}, {k: v[2:] for k, v in batch.items()}]
    reduction = SampleWeightingStep(SampleWeighting(weighting, 0.3))
    results, grads = {}, {}
    for impl in ("full", "chunked"):
        model = _model("llama")
        results[impl] = accumulate_gradients(model, halves, reduction, 0, World(), loss_impl=impl)
        grads[impl] = _grads(model)
    torch.testing.assert_close(results["chunked"].losses, results["full"].losses, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(results["chunked"].weights, results["full"].weights, atol=1e-6, rtol=1e-5)
    for name in grads["full"]:
        torch.testing.assert_close(grads["chunked"][name], grads["full"][name], atol=1e-5, rtol=1e-5, msg=name)


def test_doremi_excess_is_exact_with_the_chunked_loss():
    proxy, reference = _model("gpt2", seed=0), _model("gpt2", seed=1)
    input_ids, _ = _ids_and_labels()
    with torch.no_grad():  # the hand computation, from full logits
        lp, mask = per_token_losses(proxy(input_ids=input_ids).logits, input_ids)
        lr, _ = per_token_losses(reference(input_ids=input_ids).logits, input_ids)
    expected = [sum(max(lp[s, t].item() - lr[s, t].item(), 0.0) for t in range(19)) for s in range(3)]
    for impl in ("full", "chunked"):
        reduction = DoReMiWeighting(reference, ["a", "b"], loss_impl=impl)
        with torch.no_grad():
            token_losses, mask = lm_token_losses(proxy, input_ids, impl)
        signal = reduction.sample_signal(input_ids, token_losses, mask)
        assert signal[:, 0].tolist() == pytest.approx(expected, rel=1e-6, abs=1e-6)
        assert signal[:, 1].tolist() == [19, 19, 19]
    assert min(expected) > 0  # two different models: every sample has some excess


def test_auto_chunks_large_vocabulary_times_length_only():
    model = _model("gpt2")  # V = 300
    assert resolve_loss_impl("auto", model, 64) == "full"
    assert resolve_loss_impl("auto", model, 2**22 // VOCAB + 1) == "chunked"
    assert resolve_loss_impl("full", model, 10**6) == "full"

    class NotHF(torch.nn.Module):
        def forward(self, input_ids):
            raise AssertionError("not called")

    assert resolve_loss_impl("auto", NotHF(), 10**6) == "full"
    with pytest.raises(MixweightError, match="loss_impl chunked needs a Hugging Face causal LM"):
        lm_token_losses(NotHF(), torch.zeros(1, 4, dtype=torch.long), "chunked")
    with pytest.raises(MixweightError, match="'loss_impl' must be one of auto, full, chunked, got 'fast'"):
        resolve_loss_impl("fast", model, 4)
    with pytest.raises(MixweightError, match="'loss_impl' must be auto, full or chunked, got 'fast'"):
        TrainConfig(data=".", out=".", loss_impl="fast").validate()


def test_the_chunked_forward_keeps_the_model_otherwise_unchanged():
    model = _model("gpt2")
    keys = list(model.state_dict())
    input_ids, _ = _ids_and_labels()
    before = model(input_ids=input_ids).logits
    lm_token_losses(model, input_ids, "chunked")
    assert list(model.state_dict()) == keys
    torch.testing.assert_close(model(input_ids=input_ids).logits, before, atol=0, rtol=0)
    import copy

    twin = copy.deepcopy(model)  # the installed forward is bound to its own model, not the original
    with torch.no_grad():
        twin.transformer.wte.weight.add_(1.0)
    assert not torch.equal(twin(input_ids=input_ids).logits, before)
    chunked_twin, _ = lm_token_losses(twin, input_ids, "chunked")
    full_twin, _ = lm_token_losses(twin, input_ids, "full")
    torch.testing.assert_close(chunked_twin, full_twin, atol=1e-6, rtol=1e-6)


def test_evaluation_gives_the_same_domain_losses_with_either_impl(synth_corpus, tiny_spec):
    from mixweight.core.model import build_model
    from mixweight.data.manifest import load_manifest
    from mixweight.train.validation import evaluate_domains, load_validation

    manifest = load_manifest(synth_corpus)
    model = build_model(tiny_spec, manifest, seed=0)
    val_sets = load_validation(synth_corpus, manifest, 2)
    full = evaluate_domains(model, val_sets, 3, loss_impl="full")
    chunked = evaluate_domains(model, val_sets, 3, loss_impl="chunked")
    for name, stats in full["domains"].items():
        assert chunked["domains"][name]["tokens"] == stats["tokens"] > 0
        assert chunked["domains"][name]["loss"] == pytest.approx(stats["loss"], rel=1e-6)


@pytest.mark.distributed
def test_chunked_loss_under_ddp_and_fsdp_trains_like_one_process(three_step_linupper_run, float64_mixweight):
    """The chunked loss runs inside the wrapped model's forward: DDP's and FSDP's gradients are the global ones."""
    entry = list(float64_mixweight)  # float64: see EXACT_ATOL

    def run(out, batch, processes=1, flags=()):
        return three_step_linupper_run(entry, out, batch, processes, flags)

    single = run("single", 8)
    ddp = run("ddp", 4, 2)
    fsdp = run("fsdp", 4, 2, ["--fsdp"])
    assert single.keys() == ddp.keys() == fsdp.keys()
    for key in single:
        torch.testing.assert_close(ddp[key], single[key], atol=1e-10, rtol=0, msg=key)
        torch.testing.assert_close(fsdp[key], single[key], atol=1e-10, rtol=0, msg=key)


def test_a_doremi_proxy_step_is_the_same_with_either_impl():
    """Through the step: the signal seam hands DoReMi per-token losses from either impl, under accumulation."""
    input_ids, _ = _ids_and_labels()
    batch = {"input_ids": input_ids, "domain": torch.tensor([0, 1, 1])}
    micro = [{k: v[:1] for k, v in batch.items()}, {k: v[1:] for k, v in batch.items()}]
    reference = _model("gpt2", seed=1)
    reductions, results = {}, {}
    for impl in ("full", "chunked"):
        reductions[impl] = DoReMiWeighting(reference, ["a", "b"], log_every=1, loss_impl=impl)
        results[impl] = accumulate_gradients(_model("gpt2"), micro, reductions[impl], 0, World(), loss_impl=impl)
    assert reductions["full"].updates == reductions["chunked"].updates == 1  # one update per step
    excess = reductions["full"].excess
    assert (excess > 0).all()
    torch.testing.assert_close(reductions["chunked"].excess, excess, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(results["chunked"].weights, results["full"].weights, atol=1e-6, rtol=1e-6)
