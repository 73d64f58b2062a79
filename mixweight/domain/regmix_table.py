"""A swarm trained elsewhere, read from two CSV files: each run's mixture, and each run's losses.

Two layouts are read (and told apart by their column names):

- RegMix's (sail-sg/regmix `data/`): `train_mixture.csv` with an `index` column and one column per domain
  named `train_<domain>`; `train_pile_loss.csv` with `index` and one column per evaluated domain named
  `metric/<domain>_val_loss`. The domain is the name between the prefix and the suffix.
- olmix's (allenai/olmix `olmix fit`): `ratios.csv` and `metrics.csv`, joined on a `run` (or `run_id`)
  column; `name`, `index` and unnamed (pandas index) columns are metadata; every other column of ratios.csv
  is a domain, every other column of metrics.csv a metric to minimise (losses, bits per byte).

Rows are joined on `run`, `run_id` or `index`, whichever both files have. A mixture row must hold
non-negative numbers summing to 1 within ROW_SUM_TOLERANCE (olmix's check: 3-decimal tables sum to 0.998-1.001),
and is renormalised; a loss cell may be empty or NaN (a run whose target loss is missing is left out and
named). A mixture row without a losses row (an unfinished run) is left out and named. Anything else wrong is
one MixweightError line naming the file, the row and the column.

`map_domains` turns the table's domain names into a corpus's: a name equal to a corpus domain is that
domain; else the one corpus domain equal to it once case, punctuation and the table's common name prefix
(`the_pile_`) are ignored; `domain_map` (TABLE=CORPUS) decides the rest. A name that maps to no corpus
domain, or to several, or two names mapped to one domain, is one clear error.
"""

from __future__ import annotations

import csv
import hashlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mixweight.errors import MixweightError, did_you_mean

ROW_SUM_TOLERANCE = 0.01
JOIN_KEYS = ("run", "run_id", "index")  # in order of preference: olmix's run ids, then RegMix's index
META_COLUMNS = {"run", "run_id", "name", "index"}
MIXTURE_PREFIX = "train_"  # RegMix's mixture columns (its config keys)
LOSS_PATTERN = re.compile(r"^metric/(.+)_val_loss$")  # RegMix's loss columns


@dataclass
class SwarmTable:
    """The joined table: run i has key `keys[i]`, mixture `x[i]` over `domains`, losses `losses[i]` over
    `metrics` (NaN where missing)."""

    layout: str  # "regmix" or "olmix"
    domains: list[str]
    columns: dict[str, str]  # domain or metric -> its column in the file, for messages
    metrics: list[str]
    keys: list[str]
    x: np.ndarray
    losses: np.ndarray
    files: dict[str, dict] = field(default_factory=dict)  # {"mixtures"|"losses": {"file", "sha256"}}
    unmatched: list[str] = field(default_factory=list)  # mixture rows without a losses row


def _read_csv(path: Path, what: str) -> tuple[list[str], list[list[str]]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except FileNotFoundError:
        raise MixweightError(f"weights regmix: --swarm-table {what} file {path}: not found") from None
    except UnicodeDecodeError as exc:
        raise MixweightError(f"weights regmix: {path}: not UTF-8 text (byte {exc.start}); expected a CSV") from None
    except (OSError, csv.Error) as exc:
        raise MixweightError(f"weights regmix: {path}: cannot be read as CSV ({exc})") from None
    rows = [row for row in rows if any(cell.strip() for cell in row)]
    if len(rows) < 2:
        raise MixweightError(f"weights regmix: {path}: expected a header row and one row per run, got {len(rows)} rows")
    header = [cell.strip() for cell in rows[0]]
    repeated = sorted({c for c in header if c and header.count(c) > 1})
    if repeated:
        raise MixweightError(f"weights regmix: {path}: column(s) {repeated} appear twice in the header")
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise MixweightError(
                f"weights regmix: {path}: line {number} has {len(row)} cells, the header {len(header)}"
            )
    return header, rows[1:]


def _is_meta(column: str) -> bool:
    return column in META_COLUMNS or not column or column.startswith("Unnamed")


def _cell(text: str, path: Path, key: str, column: str, missing_ok: bool) -> float:
    text = text.strip()
    if not text and missing_ok:
        return math.nan
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or (math.isnan(value) and not missing_ok) or math.isinf(value):
        raise MixweightError(f"weights regmix: {path}: run {key}, column {column!r}: {text!r} is not a finite number")
    return value


def _join_key(mixtures: list[str], losses: list[str], paths: tuple[Path, Path]) -> str:
    for key in JOIN_KEYS:
        if key in mixtures and key in losses:
            return key
    raise MixweightError(
        f"weights regmix: {paths[0]} and {paths[1]} share no column to join their rows on: both need one of "
        f"{', '.join(JOIN_KEYS)} (olmix: run; RegMix: index)"
    )


def _rows(header: list[str], rows: list[list[str]], key: str, path: Path) -> dict[str, list[str]]:
    at = header.index(key)
    by_key = {}
    for row in rows:
        name = row[at].strip()
        if not name or name in by_key:
            raise MixweightError(f"weights regmix: {path}: {key} {name!r} is empty or appears twice")
        by_key[name] = row
    return by_key


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_swarm_table(mixtures_path: str | Path, losses_path: str | Path) -> SwarmTable:
    """The two files joined (module docstring); one line naming the file, row and column for anything wrong."""
    paths = (Path(mixtures_path), Path(losses_path))
    mix_header, mix_rows = _read_csv(paths[0], "mixtures")
    loss_header, loss_rows = _read_csv(paths[1], "losses")
    key = _join_key(mix_header, loss_header, paths)
    mix_columns = [c for c in mix_header if not _is_meta(c)]
    loss_columns = [c for c in loss_header if not _is_meta(c)]
    if len(mix_columns) < 2 or not loss_columns:
        raise MixweightError(
            f"weights regmix: --swarm-table needs 2 or more domain columns in {paths[0]} (got {mix_columns}) and "
            f"one or more loss columns in {paths[1]} (got {loss_columns})"
        )
    regmix_layout = all(c.startswith(MIXTURE_PREFIX) for c in mix_columns)
    domains = [c[len(MIXTURE_PREFIX) :] if regmix_layout else c for c in mix_columns]
    metrics = [LOSS_PATTERN.match(c).group(1) if LOSS_PATTERN.match(c) else c for c in loss_columns]
    for names, path in ((domains, paths[0]), (metrics, paths[1])):
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise MixweightError(f"weights regmix: {path}: {twice} name the same domain twice")
    mixtures = _rows(mix_header, mix_rows, key, paths[0])
    losses = _rows(loss_header, loss_rows, key, paths[1])
    keys = [k for k in mixtures if k in losses]
    x, y = [], []
    for k in keys:
        row = [_cell(mixtures[k][mix_header.index(c)], paths[0], k, c, missing_ok=False) for c in mix_columns]
        total = sum(row)
        if min(row) < 0 or abs(total - 1.0) > ROW_SUM_TOLERANCE:
            raise MixweightError(
                f"weights regmix: {paths[0]}: run {k}: its weights sum to {total:.6g} (or hold a negative one); "
                f"a mixture sums to 1 (within {ROW_SUM_TOLERANCE})"
            )
        x.append([w / total for w in row])
        y.append([_cell(losses[k][loss_header.index(c)], paths[1], k, c, missing_ok=True) for c in loss_columns])
    return SwarmTable(
        layout="regmix" if regmix_layout else "olmix",
        domains=domains,
        columns={**dict(zip(domains, mix_columns)), **dict(zip(metrics, loss_columns))},
        metrics=metrics,
        keys=keys,
        x=np.array(x, dtype=np.float64).reshape(len(keys), len(domains)),
        losses=np.array(y, dtype=np.float64).reshape(len(keys), len(metrics)),
        files={name: {"file": path.name, "sha256": _sha256(path)} for name, path in zip(("mixtures", "losses"), paths)},
        unmatched=[k for k in mixtures if k not in losses],
    )


# --- names ------------------------------------------------------------------------------------------
def _normal(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", name.lower())


def common_prefix(names: list[str]) -> str:
    """The longest prefix every name shares, cut after its last separator (`the_pile_`), or ''."""
    if len(names) < 2:
        return ""
    prefix = names[0]
    for name in names[1:]:
        while not name.startswith(prefix):
            prefix = prefix[:-1]
    cut = max(prefix.rfind(sep) for sep in "_-./")
    return prefix[: cut + 1] if cut >= 0 else ""


def map_domains(
    names: list[str], corpus: list[str], explicit: dict | None, where: str, strict: bool = True
) -> dict[str, str]:
    """{table name: corpus domain} (module docstring). `strict`: a name that maps to nothing is an error (the
    mixture's domains); else it is left out (a loss column that is a metric, not a domain)."""
    explicit = dict(explicit or {})
    prefix = common_prefix(names)
    found: dict[str, str] = {}
    for name in names:
        if name in explicit:
            chosen = explicit[name]
            if chosen not in corpus:
                raise MixweightError(
                    f"weights regmix: --domain-map {name}={chosen}: '{chosen}' is not a domain of the corpus; "
                    f"{did_you_mean(chosen, corpus)}the corpus's domains are {', '.join(corpus)}"
                )
        elif name in corpus:
            chosen = name
        else:
            keys = {_normal(name), _normal(name[len(prefix) :])} - {""}
            candidates = [d for d in corpus if _normal(d) in keys]
            if len(candidates) > 1:
                raise MixweightError(
                    f"weights regmix: swarm table domain '{name}' ({where}) matches several corpus domains "
                    f"({', '.join(candidates)}); name one with --domain-map {name}=DOMAIN"
                )
            if not candidates:
                if not strict:
                    continue
                raise MixweightError(
                    f"weights regmix: swarm table domain '{name}' ({where}) maps to no domain of the corpus; "
                    f"{did_you_mean(name[len(prefix) :], corpus, cutoff=0.4)}the corpus's domains are "
                    f"{', '.join(corpus)}; name its domain with --domain-map {name}=DOMAIN"
                )
            chosen = candidates[0]
        found[name] = chosen
    twice = sorted({d for d in found.values() if list(found.values()).count(d) > 1})
    if twice:
        names_of = {d: [n for n, m in found.items() if m == d] for d in twice}
        raise MixweightError(
            f"weights regmix: swarm table domains {names_of} map to the same corpus domain ({where}); "
            "each corpus domain may stand for one table domain: fix --domain-map"
        )
    return found


def check_domain_map(explicit: dict | None, names: list[str], where: str) -> None:
    """Every --domain-map key names a domain of the table (a misspelt key would silently do nothing)."""
    unknown = [k for k in (explicit or {}) if k not in names]
    if unknown:
        raise MixweightError(
            f"weights regmix: --domain-map names {unknown}, not domains of the swarm table ({where}); "
            f"{did_you_mean(unknown[0], names)}the table's domains are {', '.join(names)}"
        )
