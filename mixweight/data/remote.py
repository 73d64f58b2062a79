"""Corpora on object storage: URL rules, the local cache, and fetching through mosaicml-streaming.

A corpus location is a local directory or a URL mosaicml-streaming can read (``s3://``, ``gs://``,
``oci://``, ``azure://``, ``hf://``, ...), or ``file:///path``: a local directory read through the
same remote code path (what tests and shared filesystems use). Every transfer goes through
streaming's own downloaders and uploaders, so credentials and endpoints are configured the way
streaming documents them (``S3_ENDPOINT_URL``, ``AWS_*``, ``GCS_KEY``, ...).

Reading (:func:`fetch_corpus`) copies the manifest first, then every stream's ``index.json``, the
validation shards and a trained tokenizer into a local cache directory; training shards are left to
streaming (``Stream(remote=, local=)``), which downloads them as they are needed. The cache copy is
keyed by the URL and the manifest's bytes, so a corpus written again at the same URL never mixes
with shards of its old version, and its ``manifest.json`` is written last: a cache copy without one
is incomplete and is fetched again. ``MARKER`` names the URL a cache copy came from.

Writing (:func:`upload_corpus`) uploads a finished local corpus, manifest LAST, so a half-uploaded
corpus has no manifest and is never mistaken for a complete one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import uuid
from pathlib import Path

from mixweight.data.manifest import MANIFEST_NAME, SPLITS, Manifest
from mixweight.data.streams import check_encodings, read_index, shard_basename
from mixweight.errors import MixweightError

INDEX_NAME = "index.json"
MARKER = ".mixweight-remote.json"  # in a cache copy: {"url": the corpus URL}
CACHE_DIR_ENV = "MIXWEIGHT_CORPUS_CACHE"  # what --cache-dir sets; inherited by launched processes
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def _schemes() -> list[str]:
    """The URL schemes streaming reads and writes, plus `file` (a local directory, read as a remote)."""
    from streaming.base.storage.download import DOWNLOADER_MAPPINGS
    from streaming.base.storage.upload import UPLOADERS

    return sorted({s for s in DOWNLOADER_MAPPINGS if s and "/" not in s} & set(UPLOADERS) | {"file"})


def is_url(location) -> bool:
    """True for `scheme://...`; a supported scheme is checked by :func:`check_url`."""
    return isinstance(location, str) and _URL.match(location) is not None


def check_url(url: str, what: str = "corpus") -> str:
    """The URL without a trailing slash; an unknown scheme or a URL without a path is one line."""
    scheme = _URL.match(url).group(1).lower()
    schemes = _schemes()
    if scheme not in schemes:
        raise MixweightError(
            f"{what} {url}: mosaicml-streaming does not read '{scheme}://' URLs; use a local "
            f"directory or one of {', '.join(s + '://' for s in schemes)}"
        )
    if not url[len(scheme) + 3 :].strip("/"):
        raise MixweightError(f"{what} {url}: the URL names no bucket or path; like s3://bucket/corpus")
    if scheme == "file" and not url[len("file://") :].startswith("/"):
        raise MixweightError(f"{what} {url}: a file URL needs an absolute path, like file:///shared/corpus")
    return url.rstrip("/")


def streaming_path(url: str) -> str:
    """The location as streaming takes it: `file:///x` is the plain path /x (streaming's local remote)."""
    return url[len("file://") :] if url.lower().startswith("file://") else url


def local_path_of(url: str) -> Path | None:
    """The local directory a file:// URL names (None for any other scheme)."""
    return Path(streaming_path(url)) if url.lower().startswith("file://") else None


def join(url: str, *parts: str) -> str:
    return "/".join([url.rstrip("/"), *[p.strip("/") for p in parts]])


def platform_cache() -> Path:
    """`MIXWEIGHT_CACHE`, else the platform's user cache directory, plus `mixweight`."""
    if os.environ.get("MIXWEIGHT_CACHE"):
        return Path(os.environ["MIXWEIGHT_CACHE"])
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "mixweight"
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "mixweight" / "Cache"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mixweight"


def set_cache_dir(path: str | None) -> None:
    """Apply `--cache-dir` to this process and to the processes it launches (torchrun, pipeline stages); a path
    that is a file, lies inside a corpus or run, or cannot be written is refused (mixweight.core.outputs)."""
    if path:
        from mixweight.core.outputs import check_output_path

        check_output_path(path, "--cache-dir", kind="dir", what="the corpus cache", owned=lambda _: True)
        try:
            resolved = Path(path).expanduser().resolve()
        except (OSError, ValueError, RuntimeError) as exc:
            raise MixweightError(f"--cache-dir {path}: not a usable path ({exc})") from None
        os.environ[CACHE_DIR_ENV] = str(resolved)


def cache_dir() -> Path:
    """Where remote corpora are cached: `--cache-dir`, else `<MIXWEIGHT_CACHE or platform cache>/remote`."""
    chosen = os.environ.get(CACHE_DIR_ENV)
    return Path(chosen) if chosen else platform_cache() / "remote"


def _slug(url: str) -> str:
    """A readable, collision-free directory name for a URL."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", url.split("://", 1)[-1]).strip("_")[-48:]
    return f"{readable}-{hashlib.sha256(url.encode()).hexdigest()[:12]}"


def remote_of(corpus_dir) -> str | None:
    """The URL a cache copy was fetched from, None for a plain local corpus."""
    marker = Path(corpus_dir) / MARKER
    if not marker.is_file():
        return None
    try:
        url = json.loads(marker.read_text(encoding="utf-8"))["url"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise MixweightError(f"{marker}: unreadable cache marker ({exc}); delete {marker.parent} and rerun") from exc
    return url if isinstance(url, str) and is_url(url) else None


# --- transfers -------------------------------------------------------------------------------------
class MissingObject(MixweightError):
    """The object is not at its URL (as opposed to an unreachable or refusing store)."""


def _reason(exc: BaseException) -> tuple[str, bool]:
    """(a short reason, whether the object is simply absent) for a failed transfer."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and isinstance(response.get("Error"), dict):  # botocore ClientError
        code, message = str(response["Error"].get("Code", "")), str(response["Error"].get("Message", ""))
        return f"{code}: {message}".strip(": "), code in ("404", "NoSuchKey", "NoSuchBucket")
    if isinstance(exc, FileNotFoundError):
        return "no such object", True
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text[:200]}", False


def fetch(url: str, local: Path, what: str) -> None:
    """Download one object with streaming's downloader; atomic (a unique temporary name, then a rename).

    Several processes (torchrun ranks, nodes sharing a cache) may fetch the same file at once:
    each writes its own temporary and the last rename wins with identical bytes.
    """
    from streaming.base.storage.download import CloudDownloader

    made = [p for p in [local.parent, *local.parent.parents] if not p.exists()]  # removed again if it fails
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.with_name(f".{local.name}.{uuid.uuid4().hex}.tmp")
    try:
        CloudDownloader.direct_download(streaming_path(url), str(tmp))
        os.replace(tmp, local)
    except MixweightError:
        _remove_empty(made)
        raise
    except Exception as exc:  # botocore, google, oci, azure and OS errors alike: one line naming the URL
        if tmp.exists():
            tmp.unlink()
        _remove_empty(made)
        reason, absent = _reason(exc)
        if absent:
            raise MissingObject(
                f"{url}: {what} is not there ({reason}); check the URL (a corpus is complete only "
                f"once its {MANIFEST_NAME} is uploaded, which is uploaded last)"
            ) from None
        raise MixweightError(
            f"{url}: cannot fetch {what} ({reason}); check the URL, the endpoint and your credentials "
            "(read the way mosaicml-streaming reads them: AWS_* and S3_ENDPOINT_URL, GCS_KEY, "
            "OCI config, AZURE_*, HF_TOKEN)"
        ) from None
    finally:
        if tmp.exists():
            tmp.unlink()


def _remove_empty(directories: list[Path]) -> None:
    """The directories a failed fetch made (deepest first), while empty: a refused command leaves nothing."""
    for directory in directories:
        try:
            directory.rmdir()
        except OSError:
            return


def fetch_corpus(url: str) -> Path:
    """The local cache copy of a remote corpus: manifest, stream indexes, validation shards, tokenizer.

    Encodings of every stream index are checked (`check_encodings`) before any shard is fetched;
    `load_manifest` then checks the copy as it checks any corpus.
    """
    url = check_url(url)
    base = cache_dir() / _slug(url)
    manifest_tmp = base / f".{MANIFEST_NAME}.{uuid.uuid4().hex}.fetch"
    try:
        fetch(join(url, MANIFEST_NAME), manifest_tmp, "the corpus manifest")
        raw_bytes = manifest_tmp.read_bytes()
        local = base / hashlib.sha256(raw_bytes).hexdigest()[:16]
        if (local / MANIFEST_NAME).is_file():
            return local  # fetched before: the same manifest bytes name the same corpus
        try:
            raw = json.loads(raw_bytes.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise MixweightError(f"{join(url, MANIFEST_NAME)}: not valid JSON ({exc}); re-create the corpus") from exc
        manifest = Manifest.from_json(raw, where=join(url, MANIFEST_NAME))  # checks the stream paths stay inside
        local.mkdir(parents=True, exist_ok=True)
        marker_tmp = local / f".{MARKER}.{uuid.uuid4().hex}.tmp"  # atomic: other processes may be reading it
        marker_tmp.write_text(json.dumps({"url": url}) + "\n", encoding="utf-8")
        os.replace(marker_tmp, local / MARKER)
        for split in SPLITS:
            for domain in manifest.domains:
                rel = manifest.splits[split][domain].path
                index = local / rel / INDEX_NAME
                fetch(join(url, rel, INDEX_NAME), index, f"the stream index of domain '{domain}' ({split})")
                where = f"{join(url, rel)}: domain '{domain}' ({split})"
                shards = read_index(index, where)
                check_encodings(shards, index, where, manifest.seq_len)
                if split == "val":  # evaluation reads these whole; training shards are streaming's to fetch
                    for number, shard in enumerate(shards):
                        name = shard_basename(shard, number, index, where)
                        if not (local / rel / name).is_file():
                            fetch(join(url, rel, name), local / rel / name, f"validation shard {name} of '{domain}'")
        tokenizer_file = manifest.tokenizer.get("path") if manifest.tokenizer.get("kind") == "bpe" else None
        if (
            isinstance(tokenizer_file, str)
            and not Path(tokenizer_file).is_absolute()
            and ".." not in Path(tokenizer_file).parts
        ):
            fetch(join(url, tokenizer_file), local / tokenizer_file, "the corpus tokenizer")
        os.replace(manifest_tmp, local / MANIFEST_NAME)  # last: a cache copy with a manifest is complete
        return local
    finally:
        if manifest_tmp.exists():
            manifest_tmp.unlink()


def remote_manifest(url: str) -> dict | None:
    """The manifest already at a corpus URL (None when there is none)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="mixweight-probe-") as tmp:
        path = Path(tmp) / MANIFEST_NAME
        try:
            fetch(join(url, MANIFEST_NAME), path, "the corpus manifest")
        except MissingObject:
            return None
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return {}
        return raw if isinstance(raw, dict) else {}


def upload_corpus(local: Path, url: str) -> None:
    """Upload a finished local corpus with streaming's uploaders, every stream first and the manifest LAST."""
    import logging

    from streaming.base.storage.upload import CloudUploader

    # Each uploader warns that its local directory is not empty: it is the finished corpus, by design.
    logging.getLogger("streaming.base.storage.upload").setLevel(logging.ERROR)
    files = sorted(p.relative_to(local) for p in local.rglob("*") if p.is_file() and p.name != MARKER)
    files = [p for p in files if p.as_posix() != MANIFEST_NAME] + [Path(MANIFEST_NAME)]
    uploaders: dict[str, object] = {}
    for rel in files:
        parent = rel.parent.as_posix()
        try:
            if parent not in uploaders:  # one uploader per directory: streaming's local one copies file by file
                target = streaming_path(url if parent == "." else join(url, parent))
                uploaders[parent] = CloudUploader.get(
                    out=(str(local / rel.parent), target), keep_local=True, exist_ok=True
                )
            uploaders[parent].upload_file(rel.name)
        except Exception as exc:
            reason, _ = _reason(exc)
            raise MixweightError(
                f"{join(url, rel.as_posix())}: cannot upload ({reason}); check the URL, the bucket "
                "and your credentials; the corpus has no manifest there yet, so nothing reads the "
                "partial upload; rerun to upload again"
            ) from None
