"""Sweeps: expand a grid / list of overrides over a base config and run each point once.

A sweep file (YAML, usually under ``configs/sweeps/``)::

    run: generate                       # a registered run kind (see `register_run`)
    base: configs/generate/tiny.yaml    # optional; relative to the sweep file or the repo root
    overrides: [max_new_tokens=8]       # optional; applied to every point
    grid:                               # optional; cartesian product in key order
      sampling.temperature: [0.0, 0.7]
    points:                             # optional; explicit override lists (points x grid)
      - [seed=1]
      - [seed=2]
    out_dir: runs/sweeps/gen-demo       # default runs/sweeps/<file stem>, relative to the cwd

Each point runs in ``out_dir/<config hash>/``: ``config.yaml`` and ``config.hash`` first,
then the run, then ``metrics.json`` and finally a ``DONE`` marker. Points whose directory
has ``DONE`` are skipped, so an interrupted sweep resumes where it stopped.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import importlib
import itertools
import json
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table
from rich.text import Text

from puyu_jax.config import (
    REPO_ROOT,
    ConfigError,
    config_hash,
    configs_dir,
    load_config,
    parse_override,
    save_run_config,
)

RunFn = Callable[[Any, Path], Mapping[str, Any]]

SWEEP_KEYS = ("run", "base", "overrides", "grid", "points", "out_dir", "description")
DONE_FILE = "DONE"
METRICS_FILE = "metrics.json"
ERROR_FILE = "error.txt"

# Modules that call `register_run` at import time; imported lazily by `get_run`.
_RUN_MODULES: tuple[str, ...] = ("puyu_jax.generate",)


@dataclass(frozen=True)
class RunKind:
    """A registered kind of run: its config dataclass and the function running one point."""

    name: str
    config_cls: type
    fn: RunFn


RUNS: dict[str, RunKind] = {}


def register_run(name: str, config_cls: type, fn: RunFn) -> RunKind:
    """Register (or replace) a run kind.

    Args:
        name: the name sweep files use in ``run:``.
        config_cls: the config dataclass of one run.
        fn: ``fn(cfg, out_dir) -> metrics`` runs one point in `out_dir` and returns a flat
            dict of numbers/strings.

    Returns:
        The registered `RunKind`.
    """
    if not (isinstance(config_cls, type) and dataclasses.is_dataclass(config_cls)):
        raise TypeError(f"register_run({name!r}): config_cls must be a dataclass type")
    kind = RunKind(name, config_cls, fn)
    RUNS[name] = kind
    return kind


def load_run_modules() -> None:
    """Import the modules in `_RUN_MODULES`, skipping only those that do not exist."""
    for mod in _RUN_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise


def get_run(name: str) -> RunKind:
    """The run kind registered as `name` (importing the known run modules if needed).

    Raises:
        ConfigError: no such run kind; the message lists the registered ones.
    """
    if name not in RUNS:
        load_run_modules()
    if name not in RUNS:
        choices = sorted(RUNS)
        close = difflib.get_close_matches(str(name), choices, n=1, cutoff=0.6)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"unknown run kind {name!r}{hint}; registered: {', '.join(choices) or 'none'}")
    return RUNS[name]


@dataclass(frozen=True)
class SweepPoint:
    """One point of a sweep.

    Attributes:
        index: position among the (deduplicated) points.
        overrides: every override applied on top of the base, as ``key=value`` text.
        varying: the point's own values of the varying keys (grid and ``points`` keys).
        config: the resolved config object.
        hash: `config_hash` of `config`; also the point's directory name.
    """

    index: int
    overrides: tuple[str, ...]
    varying: dict[str, str]
    config: Any
    hash: str


@dataclass(frozen=True)
class Sweep:
    """An expanded sweep file.

    Attributes:
        path: the sweep file.
        run: the run kind.
        base: the base config file, if any.
        out_dir: where point directories and summaries go.
        columns: the varying keys, in order (``points`` keys first, then grid keys).
        points: the unique points, in expansion order.
        duplicates: how many expanded points had the hash of an earlier one.
    """

    path: Path
    run: RunKind
    base: Path | None
    out_dir: Path
    columns: tuple[str, ...]
    points: tuple[SweepPoint, ...]
    duplicates: int = 0


def format_value(value: Any) -> str:
    """Override text for a parsed value (``None`` -> ``null``, lists as flow YAML)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value, separators=(",", ":"))


def _resolve_base(base: Any, sweep_path: Path, run: str) -> Path | None:
    if base is None:
        return None
    if not isinstance(base, str):
        raise ConfigError(f"{sweep_path}: 'base' must be a path string, got {base!r}")
    p = Path(base).expanduser()
    if p.is_absolute():
        candidates = [p]
    elif "/" not in base and p.suffix not in (".yaml", ".yml"):
        candidates = [configs_dir() / run / f"{base}.yaml", sweep_path.parent / base, REPO_ROOT / base]
    else:
        candidates = [sweep_path.parent / p, REPO_ROOT / p, Path.cwd() / p]
    for c in candidates:
        if c.is_file():
            return c
    raise ConfigError(f"{sweep_path}: base config {base!r} not found (tried {', '.join(map(str, candidates))})")


# One varying setting: (dotted key, what load_config applies, the value as text).
_Item = tuple[str, "str | tuple[str, Any]", str]


def _pair_item(key: Any, value: Any) -> _Item:
    return (str(key), (str(key), value), format_value(value))


def _point_items(entry: Any, sweep_path: Path, i: int) -> list[_Item]:
    """One ``points`` entry (list of KEY=VALUE strings, one string, or a mapping) -> items."""
    if isinstance(entry, str):
        entry = [entry]
    if isinstance(entry, Mapping):
        return [_pair_item(k, v) for k, v in entry.items()]
    if not isinstance(entry, list):
        raise ConfigError(f"{sweep_path}: points[{i}] must be a list of KEY=VALUE strings, got {entry!r}")
    items: list[_Item] = []
    for text in map(str, entry):
        key, raw = parse_override(text)
        items.append((key, text, raw))
    return items


def expand_sweep(path: str | Path, *, out_dir: str | Path | None = None) -> Sweep:
    """Read a sweep file and resolve the config of every point.

    Args:
        path: the sweep YAML.
        out_dir: overrides the file's ``out_dir``.

    Returns:
        The `Sweep`, with duplicate points (same config hash) removed.

    Raises:
        ConfigError: bad sweep file, unknown run kind, or a point whose config is invalid
            (the message names the point and the offending key).
    """
    path = Path(path)
    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as e:
        raise ConfigError(f"sweep file not found: {path}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"cannot parse sweep file {path}: {e}") from e
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}: a sweep file must be a mapping")
    for key in spec:
        if key not in SWEEP_KEYS:
            close = difflib.get_close_matches(str(key), SWEEP_KEYS, n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{path}: unknown sweep key '{key}'{hint}; valid keys: {', '.join(SWEEP_KEYS)}")
    if "run" not in spec:
        raise ConfigError(f"{path}: missing 'run' (one of: {', '.join(sorted(RUNS)) or 'none registered'})")
    kind = get_run(spec["run"])
    base = _resolve_base(spec.get("base"), path, kind.name)

    common = spec.get("overrides") or []
    if isinstance(common, str):
        common = [common]
    if not isinstance(common, list):
        raise ConfigError(f"{path}: 'overrides' must be a list of KEY=VALUE strings")
    common = [str(o) for o in common]

    grid = spec.get("grid") or {}
    if not isinstance(grid, Mapping):
        raise ConfigError(f"{path}: 'grid' must be a mapping of KEY: [values]")
    grid_keys = [str(k) for k in grid]
    grid_values = [v if isinstance(v, list) else [v] for v in grid.values()]
    for k, vs in zip(grid_keys, grid_values):
        if not vs:
            raise ConfigError(f"{path}: grid key '{k}' has no values")

    raw_points = spec.get("points")
    if raw_points is None:
        point_entries: list[list[_Item]] = [[]]
    elif isinstance(raw_points, list) and raw_points:
        point_entries = [_point_items(e, path, i) for i, e in enumerate(raw_points)]
    else:
        raise ConfigError(f"{path}: 'points' must be a non-empty list of override lists")

    columns: list[str] = []
    for items in point_entries:
        columns += [key for key, _, _ in items if key not in columns]
    columns += [k for k in grid_keys if k not in columns]

    points: list[SweepPoint] = []
    seen: set[str] = set()
    duplicates = 0
    for n, (items, combo) in enumerate(itertools.product(point_entries, itertools.product(*grid_values))):
        all_items = items + [_pair_item(k, v) for k, v in zip(grid_keys, combo)]
        texts = common + [f"{k}={t}" for k, _, t in all_items]
        try:
            cfg = load_config(kind.config_cls, base, common + [ov for _, ov, _ in all_items])
        except ConfigError as e:
            raise ConfigError(f"{path}: point {n} ({' '.join(texts)}): {e}") from e
        digest = config_hash(cfg)
        if digest in seen:
            duplicates += 1
            continue
        seen.add(digest)
        varying = {k: t for k, _, t in all_items}
        points.append(SweepPoint(len(points), tuple(texts), varying, cfg, digest))

    if out_dir is None:
        out_dir = spec.get("out_dir") or Path("runs") / "sweeps" / path.stem
    return Sweep(path, kind, base, Path(out_dir), tuple(columns), tuple(points), duplicates)


# ---------------------------------------------------------------------------
# running


def _run_point(kind: RunKind, point: SweepPoint, run_dir: Path) -> tuple[str, dict, str]:
    """Run one point in `run_dir`; returns (status, metrics, error message)."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / ERROR_FILE).unlink(missing_ok=True)
        save_run_config(point.config, run_dir)
        metrics = kind.fn(point.config, run_dir)
        if not isinstance(metrics, Mapping):
            raise TypeError(f"run {kind.name!r} returned {type(metrics).__name__}, expected a dict of metrics")
        metrics = {str(k): v for k, v in metrics.items()}
        (run_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2, default=str) + "\n")
        (run_dir / DONE_FILE).write_text("")
        return "ok", metrics, ""
    except Exception as e:  # a failing point must not stop the sweep
        message = f"{type(e).__name__}: {e}"
        try:
            (run_dir / ERROR_FILE).write_text(traceback.format_exc())
        except OSError:
            pass
        return "failed", {}, message


def _read_metrics(run_dir: Path) -> dict:
    try:
        data = json.loads((run_dir / METRICS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def run_sweep(
    path: str | Path,
    *,
    dry_run: bool = False,
    console: Console | None = None,
    out_dir: str | Path | None = None,
) -> list[dict]:
    """Run every point of a sweep that has not finished yet, then summarize.

    Args:
        path: the sweep YAML.
        dry_run: only expand and print the points (status "planned"/"cached"); writes nothing.
        console: where to print (a new rich `Console` when None).
        out_dir: overrides the sweep file's ``out_dir``.

    Returns:
        One flat row per unique point: ``index``, ``hash``, the varying keys, ``status``
        ("ok", "cached", "failed" or "planned"), ``dir``, the metrics and, for failed
        points, ``error``. Metric names that clash with these get a ``metric.`` prefix.

    Raises:
        ConfigError: the sweep file or one of its points is invalid (before anything runs).
    """
    console = console or Console()
    sweep = expand_sweep(path, out_dir=out_dir)
    n = len(sweep.points)
    dup = f", {sweep.duplicates} duplicate(s) dropped" if sweep.duplicates else ""
    console.print(f"sweep {sweep.path} ({sweep.run.name}): {n} point(s){dup} -> {sweep.out_dir}", markup=False)
    reserved = {"index", "hash", "status", "dir", "error", *sweep.columns}
    rows: list[dict] = []
    for point in sweep.points:
        run_dir = sweep.out_dir / point.hash
        label = " ".join(f"{k}={v}" for k, v in point.varying.items())
        if (run_dir / DONE_FILE).exists():
            status, metrics, error = "cached", _read_metrics(run_dir), ""
        elif dry_run:
            status, metrics, error = "planned", {}, ""
        else:
            console.print(f"[{point.index + 1}/{n}] {point.hash} {label}", markup=False)
            status, metrics, error = _run_point(sweep.run, point, run_dir)
            if error:
                console.print(f"  failed: {error} (see {run_dir / ERROR_FILE})", markup=False)
        row: dict[str, Any] = {"index": point.index, "hash": point.hash, **point.varying, "status": status}
        row["dir"] = str(run_dir)
        row.update({(f"metric.{k}" if k in reserved else k): v for k, v in metrics.items()})
        if error:
            row["error"] = error
        rows.append(row)
    columns = _summary_columns(rows, sweep.columns)
    console.print(_rich_table(sweep, rows, columns))
    if not dry_run:
        sweep.out_dir.mkdir(parents=True, exist_ok=True)
        (sweep.out_dir / "summary.md").write_text(_markdown(rows, columns))
        _write_csv(sweep.out_dir / "summary.csv", rows, columns)
    return rows


def _summary_columns(rows: list[dict], varying: tuple[str, ...]) -> list[str]:
    """index, hash, the varying keys, status, the metrics (first-seen order), error."""
    cols = ["index", "hash", *varying, "status"]
    fixed = {*cols, "dir", "error"}
    for row in rows:
        cols += [k for k in row if k not in fixed and k not in cols]
    if any("error" in row for row in rows):
        cols.append("error")
    return cols


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _rich_table(sweep: Sweep, rows: list[dict], columns: list[str]) -> Table:
    table = Table(title=f"{sweep.path.stem} ({sweep.run.name})")
    styles = {"ok": "green", "cached": "cyan", "failed": "red", "planned": "yellow"}
    columns = [c for c in columns if c != "error"]  # printed per point; kept in summary.md
    for col in columns:
        table.add_column(col, overflow="fold", no_wrap=col in ("index", "hash", "status"))
    for row in rows:
        cells = [Text(_cell(row.get(c)), style=styles.get(row["status"], "") if c == "status" else "") for c in columns]
        table.add_row(*cells)
    return table


def _markdown(rows: list[dict], columns: list[str]) -> str:
    def esc(v: Any) -> str:
        return _cell(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(esc(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore", restval="")
        writer.writeheader()
        writer.writerows(rows)
