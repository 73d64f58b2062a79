"""`configs/compare-seeds.yaml` on real text: a small corpus made from text already on this machine.

Four domains, one document per file, at most --bytes-per-domain bytes of each (files taken in the order of a
hash of their path, so every package contributes, and the same machine gives the same corpus):

    python     the standard library's Python sources          (sysconfig's stdlib)
    docs_md    Markdown files of the installed packages        (sysconfig's purelib)
    licenses   the installed packages' licence files (LICENSE*, LICENCE*, COPYING*, NOTICE*)
    rst_txt    their reStructuredText and plain-text files (other than licences)

The documents go to a JSONL file (text, meta.redpajama_set_name), and the pipeline prepares it with the byte
tokenizer (seq_len 128) in place of the synthetic corpus; every other key is configs/compare-seeds.yaml's.

    python benchmarks/compare_seeds_text.py --out DIR [--bytes-per-domain 400000] [--config configs/compare-seeds.yaml]

The report is DIR/pipeline/report/report.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sysconfig
from pathlib import Path

import yaml

LICENCE_PREFIXES = ("license", "licence", "copying", "notice")
MAX_DOCUMENT_BYTES = 20_000  # one file contributes at most this much: no single file dominates a domain


def _is_licence(path: Path) -> bool:
    return path.name.lower().startswith(LICENCE_PREFIXES)


def sources() -> dict[str, list[Path]]:
    stdlib, purelib = Path(sysconfig.get_paths()["stdlib"]), Path(sysconfig.get_paths()["purelib"])
    packages = [p for p in purelib.rglob("*") if p.is_file()]
    return {
        "python": [p for p in stdlib.rglob("*.py") if "site-packages" not in p.parts],
        "docs_md": [p for p in packages if p.suffix == ".md"],
        "licenses": [p for p in packages if _is_licence(p)],
        "rst_txt": [p for p in packages if p.suffix in (".rst", ".txt") and not _is_licence(p)],
    }


def _order(path: Path) -> str:
    return hashlib.sha256(str(path).encode()).hexdigest()


def documents(paths: list[Path], budget: int) -> list[str]:
    """Texts of `paths` in hash order until `budget` bytes; unreadable and non-UTF-8 files are skipped."""
    texts, used = [], 0
    for path in sorted(paths, key=_order):
        try:
            text = path.read_bytes()[:MAX_DOCUMENT_BYTES].decode("utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if text.strip():
            texts.append(text)
            used += len(text.encode())
        if used >= budget:
            break
    return texts


def write_corpus_input(out: Path, budget: int) -> dict[str, int]:
    """The JSONL input; an identical file already there is left as it is (its mtime is part of the pipeline's data
    stage key, so a rerun continues)."""
    counts, lines = {}, []
    for domain, paths in sources().items():
        texts = documents(paths, budget)
        counts[domain] = len(texts)
        lines += [json.dumps({"text": text, "meta": {"redpajama_set_name": domain}}) + "\n" for text in texts]
    content = "".join(lines).encode()
    if not out.is_file() or out.read_bytes() != content:
        out.write_bytes(content)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--bytes-per-domain", type=int, default=400_000)
    parser.add_argument("--config", default=str(Path(__file__).resolve().parents[1] / "configs/compare-seeds.yaml"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    counts = write_corpus_input(out / "local_text.jsonl", args.bytes_per_domain)
    print(f"local text: {counts} documents -> {out / 'local_text.jsonl'}", flush=True)
    config = yaml.safe_load(Path(args.config).read_text())
    config["data"] = {"prepare": {"input": str(out / "local_text.jsonl"), "tokenizer": "byte", "seq_len": 128}}
    (out / "compare-seeds-text.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    from mixweight.pipeline import load_pipeline_config, run_pipeline

    run_pipeline(load_pipeline_config(out / "compare-seeds-text.yaml"), str(out / "pipeline"))


if __name__ == "__main__":
    main()
