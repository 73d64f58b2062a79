"""Clustered domains on local real text: how well `data prepare --domains cluster:K` finds known kinds of text.

    nice -n 10 .venv/bin/python benchmarks/clustering.py --out /tmp/clustering-bench [--per-kind 400] \
        [--seeds 0,1,2,3,4] [--pipeline] [--pipeline-seeds 0,1,2]

No hub downloads: the corpus is text found on this machine, four kinds whose label the clustering never
reads (it is the `kind` field, given only to --compare-field):

- python:   .py files of the Python environment's site-packages;
- markdown: .md files under /usr, /opt, /root, /home and site-packages (nothing of /work but the environment);
- rst:      .rst files, the same places;
- licence:  LICENSE* / LICENCE* / COPYING* files and Debian's /usr/share/doc/*/copyright.

Each kind: `--per-kind` distinct files (exact duplicates dropped, chosen by a hash of the path, so the same
machine gives the same corpus), each cut to its first 12,000 characters, files under 300 bytes skipped.

Measured, each over `--seeds` (the sample, the SVD and k-means seeds):
1. ARI of K=4 clusters against the four kinds, the sample holding every document;
2. the same with --cluster-sample a quarter of the corpus (fit on a sample, assign the rest);
3. ARI of K=8 clusters (more clusters than kinds: ARI drops by construction; the contingency says whether
   each cluster still holds one kind);
and the assignment pass's documents/s per core. With `--pipeline`: the pipeline (gpt2-tiny, arms
`--arms`, default uniform and regmix, seeds `--pipeline-seeds`, default 0, 1, 2) on the labelled corpus and
on the K=4 clustered one, and their reports side by side; `--pipeline-only` skips the ARI runs (and reuses
OUT/local-text.jsonl when it is there).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import re
import statistics
import sysconfig
import time
from pathlib import Path

KINDS = ("python", "markdown", "rst", "licence")
MAX_CHARS = 12_000
MIN_BYTES = 300
EXCLUDED = ("/work/", "/proc/", "/tmp/", "/sys/")


def _candidates(kind: str) -> list[Path]:
    site = Path(sysconfig.get_paths()["purelib"])  # this environment's site-packages
    if kind == "python":
        return list(site.rglob("*.py"))
    roots = [Path("/usr"), Path("/opt"), Path("/root"), Path("/home"), site]
    found: list[Path] = []
    for root in roots:
        if not root.is_dir():
            continue
        if kind == "licence":
            found += [p for p in root.rglob("*") if re.match(r"(?i)(licen[cs]e|copying)", p.name)]
            if root == Path("/usr"):
                found += list(Path("/usr/share/doc").glob("*/copyright"))
        else:
            found += list(root.rglob("*.md" if kind == "markdown" else "*.rst"))
    return found


def _allowed(path: str, site: str) -> bool:
    """Outside the project's own directories (the environment's site-packages under /work is fine)."""
    return path.startswith(site) or not path.startswith(EXCLUDED)


def collect(per_kind: int) -> list[dict]:
    records, seen = [], set()
    for kind in KINDS:
        site = str(sysconfig.get_paths()["purelib"])
        paths = sorted(
            {p.resolve() for p in _candidates(kind) if p.is_file() and _allowed(str(p.resolve()), site)},
            key=lambda p: hashlib.blake2b(str(p).encode(), digest_size=8).digest(),
        )
        taken = 0
        for path in paths:
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            digest = hashlib.sha256(text.encode()).digest()
            if len(text.encode()) < MIN_BYTES or digest in seen:
                continue
            seen.add(digest)
            records.append({"text": text[:MAX_CHARS], "kind": kind, "meta": {"redpajama_set_name": kind}})
            taken += 1
            if taken == per_kind:
                break
        print(f"{kind}: {taken} documents from {len(paths)} candidate files", flush=True)
    return records


def clustered(raw: Path, out: Path, **options) -> dict:
    """One `prepare_corpus` with clustering; its ARI, contingency and documents/s per core."""
    from mixweight.data.prepare import prepare_corpus

    captured = io.StringIO()
    began = time.perf_counter()
    with contextlib.redirect_stderr(captured):
        manifest = prepare_corpus(raw, out, seq_len=128, val_fraction=0.02, progress=False, **options)
    rate = re.search(r"(\d+) documents/s per core", captured.getvalue())
    return {
        "ari": manifest.clustering["compare"]["ari"],
        "table": manifest.clustering["compare"]["table"],
        "clusters": {n: c["documents"] for n, c in manifest.clustering["clusters"].items()},
        "docs_per_s_per_core": int(rate.group(1)) if rate else None,
        "wall_s": round(time.perf_counter() - began, 1),
    }


def summary(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f} (min {min(values):.3f}, max {max(values):.3f}, n={len(values)})"


ARMS = {
    "uniform": {"domain_weights": "uniform"},
    "regmix": {"domain_weights": "regmix"},
    "odm": {"domain_weights": "online:odm", "mixing": {"every": 15}},
}


def run_pipelines(out: Path, raw: Path, arms: list[str], seeds: list[int]) -> dict:
    import yaml

    from mixweight.pipeline import load_pipeline_config, run_pipeline

    common = {"input": str(raw), "tokenizer": "byte", "seq_len": 128, "val_fraction": 0.02}
    forms = {
        "labelled": {**common, "domain_field": "meta.redpajama_set_name"},
        "clustered": {**common, "domains": "cluster:4", "compare_field": "kind"},
    }
    results = {}
    for name, prepare in forms.items():
        config = {
            "data": {"prepare": prepare},
            "train": {
                "model": "gpt2-tiny",
                "steps": 150,
                "batch_size": 16,
                "lr": 2e-3,
                "final_lr": 2e-4,
                "warmup_steps": 15,
                "eval_every": 50,
                "checkpoint_every": 50,  # a killed run (OOM on a shared machine) resumes
                "progress": False,
            },
            "doremi": None,
            "doge": None,
            "regmix": {"proxy": "gpt2-micro", "runs": 16, "steps": 30, "train": {"batch_size": 16}},
            "arms": {name: ARMS[name] for name in arms},
            "seeds": seeds,
            "report": {"baseline": "uniform"},
            "progress": False,
        }
        path = out / f"pipeline-{name}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        began = time.perf_counter()
        report = run_pipeline(load_pipeline_config(path), out / f"pipeline-{name}")
        results[name] = {
            "wall_s": round(time.perf_counter() - began, 1),
            "domains": report["corpus"]["domains"],
            "final": {
                arm: {
                    "average": info["final"]["average_loss"]["mean"],
                    "domains": {d: s["loss"]["mean"] for d, s in info["final"]["domains"].items()},
                }
                for arm, info in report["arms"].items()
            },
            "weights": {n: m.get("weights") for n, m in report["domain_weights"].items()},
            "steps_to_target": report["steps_to_target"],
            "paired": report["paired"],
            "report": str(out / f"pipeline-{name}" / "report" / "report.md"),
        }
        print(f"pipeline {name}: {json.dumps(results[name]['final'])}", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--per-kind", type=int, default=400)
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--pipeline", action="store_true")
    parser.add_argument("--pipeline-only", action="store_true")
    parser.add_argument("--arms", default="uniform,regmix", help=f"pipeline arms, of {','.join(ARMS)}")
    parser.add_argument("--pipeline-seeds", default="0,1,2", help="each arm's seeds (the report pairs them)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    raw = args.out / "local-text.jsonl"
    if args.pipeline_only and raw.is_file():  # the corpus the ARI runs used (files on the machine may change since)
        records = [json.loads(line) for line in raw.read_text(encoding="utf-8").splitlines()]
    else:
        records = collect(args.per_kind)
        raw.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    seeds = [int(s) for s in args.seeds.split(",")]
    quarter = len(records) // 4
    settings = {
        "K=4, whole corpus as sample": {"domains": "cluster:4"},
        f"K=4, sample {quarter} of {len(records)}": {"domains": "cluster:4", "cluster_sample": quarter},
        "K=8, whole corpus as sample": {"domains": "cluster:8"},
    }
    results: dict = {"documents": len(records), "per_kind": args.per_kind, "settings": {}}
    for label, options in ({} if args.pipeline_only else settings).items():
        runs = []
        for seed in seeds:
            out = args.out / f"{label.split(',')[0].replace('=', '')}-{options.get('cluster_sample', 'all')}-s{seed}"
            runs.append(clustered(raw, out, compare_field="kind", cluster_seed=seed, overwrite=True, **options))
            print(
                f"{label}, seed {seed}: ARI {runs[-1]['ari']:.4f}, {runs[-1]['docs_per_s_per_core']} docs/s/core, "
                f"{runs[-1]['wall_s']}s",
                flush=True,
            )
        results["settings"][label] = {
            "ari": summary([r["ari"] for r in runs]),
            "docs_per_s_per_core": summary([r["docs_per_s_per_core"] for r in runs]),
            "runs": runs,
        }
        print(f"== {label}: ARI {results['settings'][label]['ari']}", flush=True)
    if args.pipeline or args.pipeline_only:
        pipeline_seeds = [int(s) for s in args.pipeline_seeds.split(",")]
        results["pipeline"] = run_pipelines(args.out, raw, args.arms.split(","), pipeline_seeds)
    name = "pipeline-results.json" if args.pipeline_only else "results.json"
    (args.out / name).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out / name}")


if __name__ == "__main__":
    main()
