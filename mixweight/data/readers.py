"""Reading raw text records: JSONL (plain, gzip or zstd), Parquet, and `datasets` save_to_disk directories.

Every reader yields ``(source, position, record)`` where ``position`` is a 1-based line
number for JSONL and a 0-based row index for tabular sources, so an error can point at the
exact record (see :func:`describe`). Everything streams: a corpus never has to fit in memory.
:func:`iter_documents` and :func:`iter_texts` turn records into (domain or label, text) pairs.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Iterator

from mixweight.data.names import NAME_RULE, name_problem
from mixweight.errors import MixweightError, brief

SUPPORTED = (
    ".jsonl / .json (one JSON object per line), .jsonl.gz / .json.gz (the same, gzip-compressed), "
    ".jsonl.zst / .zst (the same, zstd-compressed), "
    ".parquet, a Hugging Face `datasets` directory written with save_to_disk, "
    "or a directory holding such files"
)
JSONL_SUFFIXES = (".jsonl", ".json")
ZST_SUFFIXES = (".jsonl.zst", ".json.zst", ".zst")
GZ_SUFFIXES = (".jsonl.gz", ".json.gz")
PARQUET_SUFFIXES = (".parquet",)
Record = tuple[Path, int, dict]


def is_datasets_dir(path: Path) -> bool:
    """`save_to_disk` leaves state.json + dataset_info.json (a Dataset) or dataset_dict.json (a DatasetDict)."""
    return path.is_dir() and (
        (path / "dataset_dict.json").is_file()
        or ((path / "state.json").is_file() and (path / "dataset_info.json").is_file())
    )


def source_kind(path: Path) -> str | None:
    """'jsonl', 'gz', 'zst', 'parquet' or 'datasets'; None for anything we cannot read."""
    if is_datasets_dir(path):
        return "datasets"
    name = path.name.lower()
    if not path.is_file():
        return None
    if name.endswith(ZST_SUFFIXES):
        return "zst"
    if name.endswith(GZ_SUFFIXES):
        return "gz"
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    return None


def scan_sources(input_path: str | Path) -> tuple[list[Path], list[str]]:
    """The readable sources under `input_path` in sorted (hence reproducible) order, and what was skipped.

    Skipped entries are 'relative/path (reason)': files of a kind we cannot read, and hidden
    entries (editor droppings, version-control directories), which are not walked into.
    """
    path = Path(input_path)
    try:
        exists = path.exists()
    except OSError as exc:  # a name the OS refuses (too long, a component too long)
        raise MixweightError(f"--input {brief(str(path))}: cannot be read ({exc.strerror})") from None
    if not exists:
        raise MixweightError(f"--input {path}: no such file or directory; expected {SUPPORTED}")
    if not path.is_file() and not path.is_dir():  # a FIFO, a device (/dev/zero): endless, or no records at all
        raise MixweightError(
            f"--input {path}: not a regular file or directory (a pipe, a device or a socket); expected {SUPPORTED}"
        )
    if path.is_file() or is_datasets_dir(path):
        if source_kind(path) is None:
            raise MixweightError(f"--input {path}: unsupported file type; expected {SUPPORTED}")
        return [path], []
    sources: list[Path] = []
    skipped: list[str] = []

    def walk(directory: Path) -> None:
        for child in sorted(directory.iterdir(), key=lambda p: p.name):
            rel = child.relative_to(path).as_posix()
            if child.name.startswith("."):
                skipped.append(f"{rel} (hidden)")
            elif child.is_dir() and not is_datasets_dir(child):
                walk(child)
            elif source_kind(child) is not None:
                sources.append(child)
            else:
                skipped.append(f"{rel} (unsupported type)")

    walk(path)
    if not sources:
        listed = ", ".join(skipped[:10]) + (", ..." if len(skipped) > 10 else "")
        found = f"found only: {listed}" if skipped else "it is empty"
        raise MixweightError(f"--input {path}: directory holds no readable files ({found}); expected {SUPPORTED}")
    return sources, skipped


def list_sources(input_path: str | Path) -> list[Path]:
    """The readable sources under `input_path`, in sorted (hence reproducible) order."""
    return scan_sources(input_path)[0]


def describe(source: Path, position: int) -> str:
    """'file line N' for line-based sources, 'file row N' for tabular ones."""
    unit = "line" if source_kind(source) in ("jsonl", "gz", "zst") else "row"
    return f"{source} {unit} {position}"


def _json_lines(source: Path, stream: io.BufferedIOBase) -> Iterator[Record]:
    """Decode strictly, so a corrupt byte is reported instead of silently becoming U+FFFD."""
    for number, raw in enumerate(stream, start=1):
        if not raw.strip():
            continue
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MixweightError(f"{source} line {number}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from exc
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise MixweightError(f"{source} line {number}: not valid JSON ({exc.msg} at column {exc.colno})") from exc
        if not isinstance(record, dict):
            raise MixweightError(f"{source} line {number}: expected a JSON object, got {type(record).__name__}")
        yield source, number, record


def read_jsonl(source: Path) -> Iterator[Record]:
    with open(source, "rb") as f:
        yield from _json_lines(source, f)


def read_gz(source: Path) -> Iterator[Record]:
    import gzip
    import zlib

    try:
        with gzip.open(source, "rb") as f:
            yield from _json_lines(source, f)
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise MixweightError(f"{source}: not a valid gzip stream ({exc})") from exc


def read_zst(source: Path) -> Iterator[Record]:
    import zstandard

    with open(source, "rb") as f:
        # max_window_size: SlimPajama-style files use long windows; allow up to 2 GiB like the zstd CLI's --long=31.
        reader = zstandard.ZstdDecompressor(max_window_size=2**31).stream_reader(f)
        try:
            yield from _json_lines(source, io.BufferedReader(reader))
        except zstandard.ZstdError as exc:
            raise MixweightError(f"{source}: not a valid zstd stream ({exc})") from exc


def read_parquet(source: Path) -> Iterator[Record]:
    import pyarrow
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(source)
    except (pyarrow.ArrowException, OSError) as exc:
        raise MixweightError(f"{source}: not a readable Parquet file ({exc})") from exc
    row = 0
    for batch in table.iter_batches(batch_size=1024):
        for record in batch.to_pylist():
            yield source, row, record
            row += 1


def read_datasets_dir(source: Path) -> Iterator[Record]:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(source))
    except Exception as exc:  # datasets raises many types for a broken directory
        raise MixweightError(f"{source}: not a readable `datasets` directory ({exc})") from exc
    # A DatasetDict's splits are concatenated in name order; the val split is ours to choose, by hash.
    parts = [loaded[k] for k in sorted(loaded)] if isinstance(loaded, datasets.DatasetDict) else [loaded]
    row = 0
    for part in parts:
        for batch in part.iter(batch_size=1024):
            columns = list(batch)
            for values in zip(*(batch[c] for c in columns)):
                yield source, row, dict(zip(columns, values))
                row += 1


READERS = {"jsonl": read_jsonl, "gz": read_gz, "zst": read_zst, "parquet": read_parquet, "datasets": read_datasets_dir}


def iter_records(input_path: str | Path) -> Iterator[Record]:
    """Every record of every source under `input_path`, sources in sorted order."""
    for source in list_sources(input_path):
        yield from READERS[source_kind(source)](source)


def _check_domain_name(name, where: str, field: str) -> str:
    """Domain names become directory names and export entries: one plain, short path component."""
    problem = name_problem(name)
    if problem:
        shown = name if not isinstance(name, str) or len(name) <= 60 else name[:60] + "..."
        raise MixweightError(f"{where}: domain {shown!r} (field '{field}') {problem}; {NAME_RULE}")
    return name


def _labelled_texts(input_path, text_field: str, label_field: str | None, flag: str):
    """(where, label, text) for every record; label None without a `label_field`; null text comes through as ''."""
    for source, position, record in iter_records(input_path):
        where = describe(source, position)
        label = get_field(record, label_field, where, flag) if label_field is not None else None
        text = get_field(record, text_field, where, "--text-field")
        if text is None:
            text = ""
        if not isinstance(text, str):
            raise MixweightError(f"{where}: field '{text_field}' holds a {type(text).__name__}, not text")
        check_encodable(text, where, text_field)
        yield where, label, text


def iter_documents(input_path, domain_field: str, text_field: str) -> Iterator[tuple[str, str]]:
    """(domain, text) for every record; empty or null text comes through as '' for the caller to count."""
    for where, domain, text in _labelled_texts(input_path, text_field, domain_field, "--domain-field"):
        yield _check_domain_name(domain, where, domain_field), text


def iter_texts(input_path, text_field: str, label_field: str | None = None) -> Iterator[tuple[object, str]]:
    """(label, text) for every record, the label any value (`--compare-field`) or None; for clustering."""
    for _where, label, text in _labelled_texts(input_path, text_field, label_field, "--compare-field"):
        yield label, text


def get_field(record: dict, dotted: str, where: str, flag: str):
    """`record["a"]["b"]` for "a.b"; a missing key names the level it failed at and the keys found there."""
    value = record
    walked: list[str] = []
    for key in dotted.split("."):
        if not isinstance(value, dict) or key not in value:
            found = sorted(value) if isinstance(value, dict) else f"a {type(value).__name__}, not an object"
            level = f" under '{'.'.join(walked)}'" if walked else ""
            raise MixweightError(
                f"{where}: no field '{dotted}' (no '{key}'{level}; keys there: {found}); "
                f"set {flag} to the field that holds it"
            )
        value = value[key]
        walked.append(key)
    return value


def check_encodable(text: str, where: str, field: str) -> None:
    """Text that UTF-8 can encode: JSON's "\\ud800" escape decodes to a lone surrogate, which no tokenizer
    (nor the file system) takes; refused naming the record, not a traceback from the tokenizer."""
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise MixweightError(
            f"{where}: field '{field}' holds a lone surrogate {text[exc.start]!r} at character {exc.start} (a JSON "
            "\\uD800-\\uDFFF escape without its pair), which is not text; fix or drop that record"
        ) from None


def input_fingerprint(input_path: str | Path) -> list[list]:
    """[relative name, size, mtime_ns] for every file read: cheap to compute, changes when the input does."""
    root = Path(input_path)
    entries = []
    for source in list_sources(root):
        files = sorted(p for p in source.rglob("*") if p.is_file()) if source.is_dir() else [source]
        for f in files:
            stat = f.stat()
            rel = f.relative_to(root).as_posix() if f != root else f.name
            entries.append([rel, stat.st_size, stat.st_mtime_ns])
    return entries
