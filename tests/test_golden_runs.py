"""Golden tiny runs: every method and arm kind gives what it gave when the golden file was recorded.

tests/scripts/golden_runs.py runs the cases in float64 (one thread) and summarises what they leave:
metrics (without timings), evaluations, checkpoint states, artifacts, parameters, printed results,
the pipeline's report. tests/golden/summary.json.gz is that summary, recorded on the commit that
last changed a result on purpose (its message says which and why). A refactoring changes nothing
here. On the machine that recorded it a new summary is byte-identical; on another CPU floats may
differ by rounding (~1e-12 in float64), so they are compared to 1e-6 relative, far below what any
change of behaviour moves (a different weight, step or sample moves losses by 1e-3 and more).

Record again (only for an intended change of results, saying so in the commit):
    python tests/scripts/golden_runs.py /tmp/golden && gzip -c /tmp/golden/summary.json > tests/golden/summary.json.gz
"""

import gzip
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "golden" / "summary.json.gz"
SCRIPT = REPO / "tests" / "scripts" / "golden_runs.py"
RELATIVE, ABSOLUTE = 1e-6, 1e-9
# The default run: every training case (static and scheduled mixtures, accumulation, each sample weighting, weights
# files and trajectories, both online mixers), the DoReMi and DoGE weights they read, export and verify; the slow
# run adds RegMix's swarm, two processes and the pipeline (about 4 minutes together).
FAST = [
    "natural", "uniform-accum2", "schedule", "per-stream", "max-epochs", "linupper-step", "quadratic-linear",
    "extremes-cap-micro", "linupper-burnin-accum2", "doremi-trajectory", "doge-weights", "odm", "odm-natural-fixed",
    "online-doremi", "export-verify",
]  # fmt: skip


def differences(expected, actual, where: str = "") -> list[str]:
    """Where `actual` differs from `expected`: keys, types, strings and integers exactly, floats to RELATIVE."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        found = [f"{where}: keys {sorted(set(expected) ^ set(actual))}"] if set(expected) != set(actual) else []
        for key in sorted(set(expected) & set(actual)):
            found += differences(expected[key], actual[key], f"{where}.{key}")
        return found
    if isinstance(expected, list) and isinstance(actual, list):
        if len(expected) != len(actual):
            return [f"{where}: {len(expected)} items, now {len(actual)}"]
        return [d for i, (e, a) in enumerate(zip(expected, actual)) for d in differences(e, a, f"{where}[{i}]")]
    if isinstance(expected, float) and isinstance(actual, (int, float)) and not isinstance(actual, bool):
        close = math.isclose(expected, actual, rel_tol=RELATIVE, abs_tol=ABSOLUTE)
        return (
            [] if close or (math.isnan(expected) and math.isnan(actual)) else [f"{where}: {expected!r} -> {actual!r}"]
        )
    return [] if type(expected) is type(actual) and expected == actual else [f"{where}: {expected!r} -> {actual!r}"]


def test_the_comparison_sees_a_change():
    golden = {"a": [1.0, {"b": "x", "c": 3}], "d": 0.5}
    assert differences(golden, {"a": [1.0 + 1e-12, {"b": "x", "c": 3}], "d": 0.5}) == []
    assert differences(golden, {"a": [1.001, {"b": "x", "c": 3}], "d": 0.5}) == [".a[0]: 1.0 -> 1.001"]
    changed = differences(golden, {"a": [1.0, {"b": "y", "c": 3}], "e": 0.5})
    assert changed == [": keys ['d', 'e']", ".a[1].b: 'x' -> 'y'"]


def _record(tmp_path, cases: list[str]) -> dict:
    done = subprocess.run(  # its own process: float64 is set before anything is built
        [sys.executable, str(SCRIPT), str(tmp_path / "golden"), "--only", ",".join(cases)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((tmp_path / "golden" / "summary.json").read_text())


def _golden() -> dict:
    with gzip.open(GOLDEN, "rt") as handle:
        return json.load(handle)


def _check(summary: dict) -> None:
    golden = _golden()
    found = [d for name in summary for d in differences(golden[name], summary[name], name)]
    assert found == [], f"{len(found)} differences from {GOLDEN.name}, the first: {found[:10]}"


def test_the_fast_cases_give_their_golden_results(tmp_path):
    _check(_record(tmp_path, FAST))


@pytest.mark.slow
def test_every_case_gives_its_golden_result(tmp_path):
    summary = _record(tmp_path, ["all"])
    assert set(summary) == set(_golden())
    _check(summary)
