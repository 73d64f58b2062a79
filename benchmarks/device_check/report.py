"""The check's JSON as the tables benchmarks/RESULTS.md holds: training arms, proxy steps, summary."""

from __future__ import annotations

from .driver import finite_positive
from .features import label
from .plan import ARM_LABELS, TRAIN_ARMS


def arm_label(name: str) -> str:
    """The arm's row name: its own for the plain arms, else its feature settings as config text."""
    return ARM_LABELS.get(name) or f"mixweight train, {label(TRAIN_ARMS[name][1])}"


def _gib(n) -> str:
    return f"{n / 2**30:.2f}" if finite_positive(n) else "-"


def markdown(result: dict) -> str:
    """The run as benchmarks/RESULTS.md tables."""
    parts, cfg, model, summary = result["parts"], result["config"], result.get("model", {}), result["summary"]
    device = result.get("device", {})
    memory_kind = next(
        (
            p["result"].get("peak_memory_kind")
            for p in parts.values()
            if p.get("status") == "ok" and "peak_memory_kind" in p.get("result", {})
        ),
        "-",
    )
    lines = [
        f"Device: {device.get('name')} (peak bf16 {device.get('peak_bf16_flops') or 'unknown'}); torch "
        f"{device.get('torch')}, transformers {device.get('transformers')}, CUDA {device.get('cuda')}. "
        f"{cfg['model']} ({model.get('parameters', 0) / 1e6:.1f}M parameters, V={cfg['vocab_size']}), "
        f"B={cfg['batch_size']} x L={cfg['seq_len']}, {cfg['steps']} steps ({cfg['drop_steps']} dropped), "
        f"{cfg['precision']}; FLOPs/token {model.get('flops_per_token', 0) / 1e9:.3f} G; peak memory: {memory_kind}; "
        f"whole run {result.get('wall_s', 0):.0f} s.",
        "",
        "| arm | tokens/s (median step) | vs mixweight plain | MFU | peak memory (GiB) | first step (s) | status |",
        "|---|---|---|---|---|---|---|",
    ]
    base = parts.get("mixweight", {}).get("result", {}).get("tokens_per_s")
    for name in TRAIN_ARMS:
        part = parts.get(name, {})
        res = part.get("result") if part.get("status") == "ok" else None
        if res is None:
            why = f"{part.get('status', 'missing')}: {part.get('error', '')[:80]}"
            lines.append(f"| {arm_label(name)} | - | - | - | - | - | {why} |")
            continue
        vs = f"{res['tokens_per_s'] / base:.2f}x" if finite_positive(base) else "-"
        mfu = f"{res['mfu'] * 100:.1f}%" if res.get("mfu") is not None else "null"
        first = f"{res['first_step_s']:.2f}" if "first_step_s" in res else "-"  # compile time shows here
        lines.append(
            f"| {arm_label(name)} | {res['tokens_per_s']:,.0f} | {vs} | {mfu} | {_gib(res['peak_memory_bytes'])} "
            f"| {first} | ok |"
        )
    lines += ["", "| proxy step | ms/step (median) | vs plain | peak memory (GiB) |", "|---|---|---|---|"]
    proxy = parts.get("proxy_steps", {})
    if proxy.get("status") == "ok":
        for name, row in (("plain", "plain step"), ("doremi", "DoReMi proxy step"), ("doge", "DoGE proxy step")):
            arm = proxy["result"]["arms"][name]
            lines.append(
                f"| {row} | {arm['ms_per_step']:.1f} | {arm['vs_plain']:.2f}x | {_gib(arm['peak_memory_bytes'])} |"
            )
    else:
        lines.append(f"| (all) | - | - | {proxy.get('status', 'missing')}: {proxy.get('error', '')[:80]} |")
    lines += ["", "| summary | value |", "|---|---|"]
    for key, value in summary.items():
        lines.append(f"| {key} | {'null' if value is None else f'{value:.3f}'} |")
    return "\n".join(lines)
