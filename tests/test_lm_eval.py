"""lm-eval-harness on a tiny checkpoint, with a local multiple-choice task (no hub access)."""

import json

import pytest
import torch

pytest.importorskip("lm_eval")

import mixweight.train.loop as loop
from mixweight.core.model import load_model
from mixweight.eval.downstream import byte_tokenizer, lm_eval_raw, resolve_model_dir, run_lm_eval, summarize
from mixweight.train.checkpoint import latest_checkpoint

TASK = "mixweight_tiny_arith"
QUESTIONS = [(2, 3), (1, 4), (3, 3), (5, 2), (4, 4), (6, 1), (2, 2), (7, 1)]
SHOTS = [(1, 1), (3, 5), (8, 1)]  # few-shot examples: a split of their own


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """No hub access for this module only (setting os.environ at import would leak into every other test)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    import datasets.config  # read at import time: another test may have imported datasets first

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)


def _write_split(path, pairs):
    with path.open("w") as f:
        for i, (a, b) in enumerate(pairs):
            right, wrong = str(a + b), str(a + b + 2)
            choices = [right, wrong] if i % 2 == 0 else [wrong, right]
            f.write(json.dumps({"question": f"{a}+{b}=", "choices": choices, "answer": choices.index(right)}) + "\n")


def _write_task(root):
    root.mkdir(parents=True, exist_ok=True)
    _write_split(root / "test.jsonl", QUESTIONS)
    _write_split(root / "shots.jsonl", SHOTS)
    # Without a train/validation split lm-eval 0.4 draws the shots from the test split and may
    # show a question its own answer; a separate few-shot split avoids that.
    data_files = {"test": str(root / "test.jsonl"), "train": str(root / "shots.jsonl")}
    # JSON, a subset of YAML: no YAML writer needed
    (root / f"{TASK}.yaml").write_text(
        json.dumps(
            {
                "task": TASK,
                "dataset_path": "json",
                "dataset_kwargs": {"data_files": data_files},
                "test_split": "test",
                "training_split": "train",
                "fewshot_split": "train",
                "output_type": "multiple_choice",
                "doc_to_text": "{{question}}",
                "doc_to_choice": "{{choices}}",
                "doc_to_target": "{{answer}}",
                "metric_list": [{"metric": "acc"}],
            },
            indent=2,
        )
    )
    return root


@pytest.fixture(scope="module")
def tiny_run(synth_corpus, tiny_spec, tmp_path_factory, train_config):
    out = tmp_path_factory.mktemp("lm_eval") / "run"
    config = train_config(
        synth_corpus,
        tiny_spec,
        out,
        steps=5,
        batch_size=8,
        lr=3e-3,
        final_lr=3e-4,
        warmup_steps=1,
        eval_every=5,
        eval_blocks=4,
        checkpoint_every=5,
        log_every=1,
        progress=False,
    )
    loop.train(config)
    return out


def _logprob(model, context: str, continuation: str) -> float:
    """sum log p(continuation bytes | context bytes), straight from the model."""
    ctx, cont = list(context.encode()), list(continuation.encode())
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        log_probs = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
    return sum(log_probs[len(ctx) - 1 + i, tok].item() for i, tok in enumerate(cont))


def test_byte_tokenizer_ids_are_the_bytes():
    text = "2+3= 5\n\nhé\x00~<|endoftext|>"
    for vocab in (256, 257):
        tok = byte_tokenizer(vocab)
        assert tok.encode("abc") == [97, 98, 99]
        assert tok.encode(text) == list(text.encode("utf-8"))  # also: the literal EOS text stays bytes
        assert tok.decode(tok.encode(text)) == text
        assert len(tok) == vocab and tok.pad_token_id is not None
    assert byte_tokenizer(257).eos_token_id == 256 and byte_tokenizer(256).eos_token_id is None


def test_lm_eval_accuracy_matches_a_hand_computation(tiny_run, tmp_path):
    include = _write_task(tmp_path / "tasks")
    checkpoint = latest_checkpoint(tiny_run)
    raw = lm_eval_raw(checkpoint, [TASK], num_fewshot=1, include_path=str(include), batch_size=4, log_samples=True)
    table = summarize(raw, [TASK])
    acc = table[TASK]["acc"]
    assert 0.0 <= acc <= 1.0 and table[TASK]["n"] == len(QUESTIONS)
    assert table[TASK]["acc_stderr"] is not None and table[TASK]["acc_stderr"] >= 0

    model = load_model(resolve_model_dir(checkpoint)).eval()
    samples = raw["samples"][TASK]
    assert len(samples) == len(QUESTIONS)
    hand_correct = []
    for sample in samples:
        doc = sample["doc"]
        contexts = [arg[0] for arg in sample["arguments"]]
        continuations = [arg[1] for arg in sample["arguments"]]
        # one shot: another question, its answer, then this question
        assert len(set(contexts)) == 1 and contexts[0].endswith("\n\n" + doc["question"])
        shot = contexts[0][: -len(doc["question"]) - 2]
        assert shot.count("=") == 1 and shot.split("=")[0] in {f"{a}+{b}" for a, b in SHOTS}
        assert continuations == [" " + c for c in doc["choices"]]
        hand = [_logprob(model, contexts[0], cont) for cont in continuations]
        harness = [resp[0][0] for resp in sample["resps"]]
        assert harness == pytest.approx(hand, abs=1e-4)
        correct = float(max(range(len(hand)), key=hand.__getitem__) == doc["answer"])
        assert sample["acc"] == correct
        hand_correct.append(correct)
    assert acc == pytest.approx(sum(hand_correct) / len(hand_correct))

    # the public entry point gives the same table (same seed, same few-shot examples)
    assert run_lm_eval(tiny_run, [TASK], num_fewshot=1, include_path=str(include), batch_size=4) == table


def test_the_pipeline_scores_every_arm_and_reports_the_accuracy(synth_corpus, tiny_spec, tmp_path):
    import yaml

    from mixweight.pipeline import load_pipeline_config, run_pipeline

    task_dir = _write_task(tmp_path / "tasks")
    task = TASK
    config = tmp_path / "pipeline.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data": {"path": {"dir": synth_corpus}},
                "train": {"model": tiny_spec, "steps": 4, "batch_size": 8, "eval_every": 0, "eval_blocks": 4},
                "doremi": None,
                "doge": None,
                "arms": {
                    "uniform": {"domain_weights": "uniform"},
                    "linupper": {"domain_weights": "uniform", "sample_weighting": "linupper"},
                },
                "eval": {"lm_eval": {"tasks": [task], "num_fewshot": 1, "include_path": str(task_dir)}},
                "progress": False,
            }
        )
    )
    out = tmp_path / "out"
    report = run_pipeline(load_pipeline_config(config), out)
    for arm in ("uniform", "linupper"):
        direct = run_lm_eval(out / "runs" / f"{arm}-seed0", [task], 1, include_path=str(task_dir))
        assert report["downstream"][arm][task]["mean"] == pytest.approx(direct[task]["acc"])
    assert "## Downstream accuracy (lm-eval-harness)" in (out / "report" / "report.md").read_text()
