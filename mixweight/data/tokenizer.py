"""Tokenizers for corpus preparation: raw bytes, a local Hugging Face tokenizer, or a BPE trained here.

All three answer the same small interface (``encode_batch``, ``decode``, ``vocab_size``,
``eos_id``, ``info``) so preparation never branches on the kind. ``info`` is what the
manifest records: the kind, a fingerprint that changes whenever the token ids would, and
where to find the tokenizer again (:func:`tokenizer_for_corpus` reloads it from there).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable

import numpy as np

from mixweight.errors import MixweightError

FORMS = (
    "'byte', 'bpe:VOCAB' (train a byte-level BPE with VOCAB tokens, e.g. bpe:32000), "
    "or PATH to a local Hugging Face tokenizer directory"
)
BPE_EOS = "<|endoftext|>"
BPE_FILE = "tokenizer/tokenizer.json"  # relative to the corpus directory
MAX_BPE_VOCAB = 2**20  # bpe:VOCAB above this is a typo: token ids stay far inside uint32, the trainer inside memory


def _sha256_files(paths: Iterable[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


class ByteTokenizer:
    """UTF-8 bytes are the ids 0..255 and 256 is EOS: no files, no training, nothing to go stale."""

    vocab_size = 257
    eos_id = 256
    info = {"kind": "byte", "fingerprint": "byte-v1"}

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.frombuffer(t.encode("utf-8"), dtype=np.uint8) for t in texts]

    def decode(self, ids) -> str:
        data = bytes(int(i) for i in ids if int(i) != self.eos_id)
        return data.decode("utf-8", errors="replace")  # a block may cut a character in half


class FastTokenizer:
    """A `tokenizers.Tokenizer`; its Rust batch encoding already runs on all cores."""

    def __init__(self, backend, eos_id: int, vocab_size: int, info: dict):
        self.backend, self.eos_id, self.vocab_size, self.info = backend, eos_id, vocab_size, info

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        encodings = self.backend.encode_batch(texts, add_special_tokens=False)
        return [np.asarray(e.ids, dtype=np.int64) for e in encodings]

    def decode(self, ids) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=False)


class SlowHFTokenizer(FastTokenizer):
    """A transformers tokenizer with no `tokenizer.json` (e.g. sentencepiece only): slower, same interface."""

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        ids = self.backend(texts, add_special_tokens=False, verbose=False)["input_ids"]
        return [np.asarray(x, dtype=np.int64) for x in ids]

    def decode(self, ids) -> str:
        return self.backend.decode([int(i) for i in ids])


def load_hf_tokenizer(path: str | Path) -> FastTokenizer:
    """A local tokenizer directory (what `save_pretrained` writes); never downloads."""
    path = Path(path)
    if not path.is_dir():
        hint = f"; pass its directory {path.parent}" if path.name == "tokenizer.json" else ""
        raise MixweightError(f"--tokenizer {path}: not a directory{hint}; expected {FORMS}")
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    except Exception as exc:  # transformers raises OSError, ValueError, ... for unusable directories
        raise MixweightError(f"--tokenizer {path}: cannot load a Hugging Face tokenizer from it ({exc})") from exc
    if tok.eos_token_id is None:
        raise MixweightError(
            f"--tokenizer {path}: the tokenizer has no eos token, which marks document ends; "
            f"set eos_token in {path / 'tokenizer_config.json'} or use another tokenizer"
        )
    json_file = path / "tokenizer.json"  # the whole fast tokenizer; without it, hash every vocab/config file
    if json_file.is_file():
        fingerprint = hashlib.sha256(json_file.read_bytes()).hexdigest()
    else:
        fingerprint = _sha256_files(sorted(p for p in path.iterdir() if p.is_file()))
    info = {"kind": "hf", "fingerprint": fingerprint, "path": str(path.resolve())}
    if tok.is_fast:
        return FastTokenizer(tok.backend_tokenizer, int(tok.eos_token_id), len(tok), info)
    return SlowHFTokenizer(tok, int(tok.eos_token_id), len(tok), info)


def _bpe_from_file(file: Path, relpath: str) -> FastTokenizer:
    from tokenizers import Tokenizer

    backend = Tokenizer.from_file(str(file))
    eos = backend.token_to_id(BPE_EOS)
    info = {"kind": "bpe", "fingerprint": hashlib.sha256(file.read_bytes()).hexdigest(), "path": relpath}
    return FastTokenizer(backend, eos, backend.get_vocab_size(with_added_tokens=True), info)


def train_bpe(texts: Iterable[str], vocab_size: int, corpus_dir: Path) -> FastTokenizer:
    """A GPT-2-style byte-level BPE trained on `texts`, saved to corpus_dir/tokenizer/tokenizer.json.

    Byte level means every string is encodable and decoding is exact. The same texts in the
    same order give the same merges, hence the same file and fingerprint.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BPE_EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    file = Path(corpus_dir) / BPE_FILE
    file.parent.mkdir(parents=True, exist_ok=True)
    backend.save(str(file))
    return _bpe_from_file(file, BPE_FILE)  # reload: encode with exactly what the file says


def parse_spec(spec: str) -> tuple[str, object]:
    """('byte', None), ('bpe', vocab_size) or ('hf', Path); a bad value says the valid forms."""
    spec = str(spec)
    if spec == "byte":
        return "byte", None
    if spec.startswith("bpe:"):
        size = spec[4:]
        if not size.isascii() or not size.isdigit() or int(size) <= ByteTokenizer.vocab_size:
            raise MixweightError(
                f"--tokenizer {spec[:40]}: VOCAB must be an integer above {ByteTokenizer.vocab_size} "
                f"(256 bytes + EOS + merges); expected {FORMS}"
            )
        if len(size) > 12 or int(size) > MAX_BPE_VOCAB:  # the trainer allocates for VOCAB up front: no abort
            raise MixweightError(
                f"--tokenizer {spec[:40]}: VOCAB may be at most {MAX_BPE_VOCAB:,} (the largest vocabularies in use "
                f"hold about 256k tokens; the BPE trainer allocates memory for VOCAB up front); expected {FORMS}"
            )
        return "bpe", int(size)
    path = Path(spec).expanduser()
    if not path.exists():
        raise MixweightError(f"--tokenizer {spec}: not 'byte', not 'bpe:VOCAB', and no such path; expected {FORMS}")
    return "hf", path


def tokenizer_for_corpus(corpus_dir: str | Path, tokenizer_info: dict):
    """Reload the tokenizer a manifest names (``manifest.tokenizer``), e.g. to decode samples."""
    kind = tokenizer_info.get("kind")
    if kind == "byte":
        return ByteTokenizer()
    if kind == "bpe":
        return _bpe_from_file(Path(corpus_dir) / tokenizer_info["path"], tokenizer_info["path"])
    if kind == "hf":
        return load_hf_tokenizer(tokenizer_info["path"])
    raise MixweightError(
        f"{corpus_dir}: tokenizer kind '{kind}' has no tokenizer to load (synthetic corpora use raw ids)"
    )
