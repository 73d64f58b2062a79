"""Downstream accuracy with lm-evaluation-harness (the optional ``eval`` extra).

``pip install -e ".[eval]"`` installs ``lm-eval``; nothing else in mixweight imports it, so
the core package works without it. A checkpoint here is an HF ``save_pretrained`` directory
with no tokenizer of its own, so :func:`tokenizer_for_model` supplies one:

* a tokenizer saved in the checkpoint directory (or passed in) wins;
* otherwise the byte tokenizer of ``data prepare --tokenizer byte`` (UTF-8 bytes are ids
  0..255, EOS is 256) when the model has 257 ids, or the raw 0..255 ids of the synthetic
  corpus (no EOS) when it has 256.

Public harness tasks download their data from the Hugging Face hub; local tasks (a YAML
file in ``include_path`` whose dataset is a local JSON file) run offline. Unlike every other
file mixweight reads, task YAML can run code: the harness's ``!function`` tag imports a Python
module beside the YAML (its design, not a mixweight choice), so use only task files you trust.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from mixweight.errors import MixweightError

BYTE_EOS = "<|endoftext|>"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
INSTALL_HINT = 'lm-eval is not installed; install the extra with: pip install -e ".[eval]"'


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (the alphabet of the ByteLevel pre-tokenizer)."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars)}


def byte_tokenizer(vocab_size: int = 257, model_max_length: int | None = None):
    """A `PreTrainedTokenizerFast` whose ids are the UTF-8 bytes (0..255).

    The ByteLevel pre-tokenizer maps each byte to a printable character; the vocabulary gives
    that character the byte's own value as id (not its position in GPT-2's table), and with no
    merges every byte stays one token. With ``vocab_size == 257`` id 256 is the EOS token
    ``<|endoftext|>`` (also used as pad); with 256 there is no EOS and byte 0 is the pad id
    (padding is masked, so its value never matters).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    if vocab_size not in (256, 257):
        raise MixweightError(f"byte tokenizer: the model's vocabulary has {vocab_size} ids, expected 256 or 257")
    table = bytes_to_unicode()
    vocab = {table[b]: b for b in range(256)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    # split_special_tokens: the text "<|endoftext|>" is 13 bytes, as `data prepare` encoded it, never id 256
    kwargs: dict[str, Any] = {"split_special_tokens": True}
    if vocab_size == 257:
        kwargs.update(eos_token=BYTE_EOS, pad_token=BYTE_EOS)
    else:
        kwargs.update(pad_token=table[0])
    if model_max_length:
        kwargs["model_max_length"] = model_max_length
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, **kwargs)
    if vocab_size == 257 and tok.eos_token_id != 256:
        raise MixweightError(f"byte tokenizer: EOS got id {tok.eos_token_id}, expected 256")
    return tok


def _load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    path = Path(path)
    if path.is_file():  # a bare tokenizer.json (e.g. CORPUS/tokenizer/tokenizer.json of a bpe:N corpus)
        tok = PreTrainedTokenizerFast(tokenizer_file=str(path))
        if BYTE_EOS in tok.get_vocab():  # what train_bpe names its EOS
            tok.eos_token = BYTE_EOS
        return tok
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    except Exception as exc:  # OSError, ValueError, ... for unusable directories
        raise MixweightError(f"{path}: cannot load a Hugging Face tokenizer from it ({exc})") from exc


def corpus_tokenizer_path(corpus_dir: str | Path) -> Path | None:
    """Where a corpus's own tokenizer lives (bpe:N or a local HF tokenizer), or None for byte/synthetic."""
    from mixweight.data.manifest import load_manifest

    info = load_manifest(corpus_dir).tokenizer
    if info.get("kind") == "bpe":
        return Path(corpus_dir) / info["path"]
    if info.get("kind") == "hf":
        return Path(info["path"])
    return None


def resolve_model_dir(checkpoint: str | Path) -> Path:
    """A model directory from a run directory (newest checkpoint), a step-N directory, or the model dir itself."""
    from mixweight.train.checkpoint import latest_checkpoint

    path = Path(checkpoint)
    if (path / "config.json").is_file():
        return path
    if (path / "model" / "config.json").is_file():
        return path / "model"
    latest = latest_checkpoint(path)
    if latest is not None and (latest / "model" / "config.json").is_file():
        return latest / "model"
    raise MixweightError(f"{path}: no model (expected a run dir, RUN/checkpoints/step-N, or step-N/model)")


def tokenizer_for_model(model_dir: str | Path, vocab_size: int, tokenizer=None, model_max_length: int | None = None):
    """The tokenizer to evaluate `model_dir` with; see the module docstring for the order."""
    from transformers import PreTrainedTokenizerBase

    if isinstance(tokenizer, PreTrainedTokenizerBase):
        tok = tokenizer
    elif tokenizer is not None:
        tok = _load_tokenizer(tokenizer)
    else:
        model_dir = Path(model_dir)
        own = next(
            (d for d in (model_dir, model_dir.parent) if any((d / name).is_file() for name in TOKENIZER_FILES)), None
        )
        if own is not None:
            tok = _load_tokenizer(own)
        elif vocab_size in (256, 257):
            return byte_tokenizer(vocab_size, model_max_length)
        else:
            raise MixweightError(
                f"{model_dir}: the model has {vocab_size} token ids and no tokenizer is saved with it; "
                "pass the corpus's tokenizer (see corpus_tokenizer_path)"
            )
    if len(tok) > vocab_size:
        raise MixweightError(f"{model_dir}: the tokenizer has {len(tok)} ids but the model only {vocab_size}")
    if tok.pad_token is None:  # else lm-eval adds a pad token past the model's embedding table
        if tok.eos_token is not None:
            tok.pad_token = tok.eos_token
        else:
            tok.pad_token = tok.convert_ids_to_tokens(0)
    return tok


def lm_eval_raw(
    checkpoint_dir: str | Path,
    tasks: list[str],
    num_fewshot: int,
    include_path: str | None = None,
    limit: int | None = None,
    batch_size: int = 16,
    tokenizer=None,
    device: str | None = None,
    log_samples: bool = False,
    seed: int = 1234,
) -> dict:
    """Run lm-eval-harness on one checkpoint and return `simple_evaluate`'s whole result dict."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as exc:
        raise MixweightError(INSTALL_HINT) from exc
    import torch

    from mixweight.core.model import load_model

    model_dir = resolve_model_dir(checkpoint_dir)
    model = load_model(model_dir)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device).eval()
    tok = tokenizer_for_model(model_dir, model.config.vocab_size, tokenizer)
    # The prefix is used only for an empty context; with no BOS/EOS (the 256-id synthetic vocabulary) use id 0.
    prefix = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    lm = HFLM(
        pretrained=model,
        tokenizer=tok,
        batch_size=batch_size,
        device=device,
        prefix_token_id=0 if prefix is None else prefix,
    )
    task_manager = TaskManager(include_path=str(include_path) if include_path else None)
    known = set(task_manager.all_tasks)
    missing = [t for t in tasks if t not in known]
    if missing:
        raise MixweightError(
            f"lm-eval: unknown task(s) {missing}" + (f" (include_path {include_path})" if include_path else "")
        )
    results = lm_eval.simple_evaluate(
        model=lm,
        tasks=list(tasks),
        num_fewshot=num_fewshot,
        limit=limit,
        task_manager=task_manager,
        log_samples=log_samples,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
    )
    if results is None:  # only on non-zero ranks of a distributed run
        raise MixweightError("lm-eval returned no results (not rank 0?)")
    return results


def _number(value) -> float | None:
    if isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value)):
        return float(value)
    return None  # lm-eval writes "N/A" when it has no stderr


def summarize(results: dict, tasks: list[str]) -> dict[str, dict]:
    """{task: {"acc", "acc_stderr", optionally "acc_norm"/"acc_norm_stderr", "n"}} from `simple_evaluate` output.

    A task that is a group reports the group's aggregate; ``acc`` is None if the task has no acc metric.
    """
    table = {}
    for task in tasks:
        metrics = results["results"].get(task, {})
        row: dict[str, Any] = {}
        for name in ("acc", "acc_norm"):
            key = next((k for k in metrics if k.split(",")[0] == name), None)
            if key is not None or name == "acc":
                row[name] = _number(metrics.get(key)) if key else None
                filt = key.split(",", 1)[1] if key and "," in key else "none"
                row[f"{name}_stderr"] = _number(metrics.get(f"{name}_stderr,{filt}"))
        n = results.get("n-samples", {}).get(task, {})
        if isinstance(n, dict) and "effective" in n:
            row["n"] = int(n["effective"])
        table[task] = row
    return table


def run_lm_eval(
    checkpoint_dir: str | Path,
    tasks: list[str],
    num_fewshot: int,
    include_path: str | None = None,
    limit: int | None = None,
    batch_size: int = 16,
    tokenizer=None,
    device: str | None = None,
) -> dict[str, dict]:
    """Accuracy per task of one checkpoint: {task: {"acc": float, "acc_stderr": float | None, ...}}.

    `checkpoint_dir` is a run directory (its newest checkpoint), RUN/checkpoints/step-N, or its
    model/ directory. `tokenizer` (a tokenizer object, a tokenizer directory, or a tokenizer.json)
    overrides the default choice of :func:`tokenizer_for_model`.
    """
    raw = lm_eval_raw(
        checkpoint_dir,
        tasks,
        num_fewshot,
        include_path=include_path,
        limit=limit,
        batch_size=batch_size,
        tokenizer=tokenizer,
        device=device,
    )
    return summarize(raw, tasks)
