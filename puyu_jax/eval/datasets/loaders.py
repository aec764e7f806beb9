"""Dataset loaders: a file or directory -> {"test": rows, "dev": rows, "skipped": [...]}, rows as
plain dicts.

Generic loaders (jsonl, json, csv / tsv, tar.gz of csv files) keep the rows as they are, apply
the loader's row transforms (see `LoaderConfig`) and accept glob patterns; the named ones turn
a benchmark's own layout (as in shared/data/eval) into flat rows with an `options` list and a
string `answer` where the benchmark has choices.

A malformed line (bad JSON, a CSV row with the wrong number of fields, a record that is not
a mapping) is named by file and line: counted in `skipped` and left out, or with
`loader.strict` raised as a `DatasetError`.
"""

from __future__ import annotations

import bz2
import csv
import glob
import gzip
import io
import json
import re
import tarfile
from pathlib import Path

from puyu_jax.eval.config import DatasetError, LoaderConfig

LETTERS = "ABCDEFGH"


class Skips:
    """Malformed lines seen while reading: `strict` raises on the first, else they are collected."""

    def __init__(self, strict: bool = False):
        self.strict, self.items = strict, []

    def add(self, path, line: int, reason: str) -> None:
        msg = f"{path}:{line}: {reason}"
        if self.strict:
            raise DatasetError(f"malformed record at {msg} (loader.strict=true)")
        self.items.append(msg)


def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    if path.suffix == ".bz2":
        return bz2.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def read_jsonl(path: Path, skips: Skips | None = None) -> list[dict]:
    """One JSON object per line; blank lines are ignored, malformed ones reported to `skips`."""
    skips = skips if skips is not None else Skips(strict=True)
    rows = []
    with _open_text(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                skips.add(path, n, f"invalid JSON ({e.msg} at column {e.colno})")
                continue
            if not isinstance(rec, dict):
                skips.add(path, n, f"expected a JSON object, got {type(rec).__name__}")
                continue
            rows.append(rec)
    return rows


def read_json(path: Path, records_key: str = "") -> list[dict]:
    """A JSON list of records, or the list under `records_key` (default: "data" when present)."""
    with _open_text(path) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{path}:{e.lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
    key = records_key or ("data" if isinstance(data, dict) and "data" in data else "")
    if key:
        if not isinstance(data, dict) or key not in data:
            raise DatasetError(f"{path}: no key {key!r} at the top level (loader.records_key)")
        data = data[key]
    if not isinstance(data, list):
        raise DatasetError(f"{path}: expected a list of records (or set loader.records_key)")
    return data


def read_csv(path: Path | io.TextIOBase, header: bool = True, fieldnames=None, delimiter: str = "",
             skips: Skips | None = None, name: str = "") -> list[dict]:
    """Rows of a CSV / TSV file (tab for `.tsv` unless `delimiter` is given); a row whose field
    count differs from the header's is reported to `skips`."""
    skips = skips if skips is not None else Skips(strict=True)
    name = name or str(path)
    if not delimiter:
        delimiter = "\t" if isinstance(path, Path) and path.suffix == ".tsv" else ","
    f = _open_text(path) if isinstance(path, Path) else path
    rows = []
    with f:
        reader = csv.reader(f, delimiter=delimiter)
        cols = list(fieldnames) if fieldnames else None
        if header:
            first = next(reader, None)
            if first is None:
                return []
            cols = cols or first
        for rec in reader:
            if not rec:
                continue
            if len(rec) != len(cols):
                skips.add(name, reader.line_num, f"{len(rec)} fields, the header has {len(cols)} "
                                                 f"(delimiter {delimiter!r}; set loader.delimiter?)")
                continue
            rows.append(dict(zip(cols, rec)))
    return rows


def read_tar_csv(path: Path, pattern: str = "", skips: Skips | None = None) -> list[dict]:
    """Rows of every `.csv` member (sorted by name) of a tar.gz; each row gets a `_file` column."""
    rows = []
    with tarfile.open(path) as tf:
        for m in sorted((m for m in tf.getmembers() if m.isfile() and m.name.endswith(".csv")), key=lambda m: m.name):
            if pattern and pattern not in m.name:
                continue
            text = io.TextIOWrapper(tf.extractfile(m), encoding="utf-8")
            for r in read_csv(text, skips=skips, name=f"{path}:{m.name}"):
                rows.append({**r, "_file": Path(m.name).name})
    return rows


def _file(base: Path, name: str) -> Path:
    if base.is_file():
        return base
    p = base / name
    if not p.exists():
        raise DatasetError(f"dataset file {p} not found")
    return p


def _files(base: Path, pattern: str) -> list[Path]:
    """The files of a split: `base` itself, `base/pattern`, or the sorted matches of a glob."""
    if base.is_file():
        return [base]
    if any(c in pattern for c in "*?["):
        found = sorted(Path(p) for p in glob.glob(str(base / pattern)))
        if not found:
            raise DatasetError(f"no dataset file matches {base / pattern}")
        return found
    return [_file(base, pattern)]


def _flatten(row: dict, prefix: str = "") -> dict:
    """Nested mappings also as dotted columns: {"a": {"b": 1}} -> {"a": {...}, "a.b": 1}."""
    out = {}
    for k, v in row.items():
        key = f"{prefix}{k}"
        out[key] = v
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
    return out


def _transform(cfg: LoaderConfig, base: Path, path: Path, rows: list[dict], skips: Skips) -> list[dict]:
    stem = path.name.split(".")[0] if path.suffix in (".gz", ".bz2") else path.stem
    pat = re.compile(cfg.subject_pattern) if cfg.subject_pattern else None
    out = []
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            skips.add(path, i + 1, f"record {i} is {type(r).__name__}, not a mapping")
            continue
        r = {"_file": stem, **_flatten(r)}
        if pat:
            m = pat.fullmatch(stem)
            if not m:
                raise DatasetError(f"{path}: loader.subject_pattern {cfg.subject_pattern!r} does not match {stem!r}")
            subject = m.group(1) if m.groups() else m.group(0)
            r["subject"], r["subject_name"] = subject, subject.replace("_", " ")
        for col, sep in cfg.split.items():
            if col not in r:
                raise DatasetError(f"{path}: loader.split names column {col!r}, which the rows lack "
                                   f"(columns: {', '.join(sorted(k for k in r if not k.startswith('_')))})")
            r[col] = [x.strip() for x in re.split(sep, str(r[col])) if x.strip()]
        for col, tmpl in cfg.attach.items():
            try:
                rel = tmpl.format_map(r)
            except KeyError as e:
                raise DatasetError(f"loader.attach.{col}={tmpl!r} uses column {e}, which the rows lack") from None
            r[col] = _file(base if base.is_dir() else base.parent, rel).read_text(encoding="utf-8")
        out.append(r)
    return out


def _slice(rows: list, spec: str) -> list:
    if not spec:
        return rows
    a, b = (int(x) if x.strip() else None for x in spec.split(":"))
    return rows[a:b]


def _generic(cfg: LoaderConfig, base: Path, pattern: str, skips: Skips) -> list[dict]:
    rows = []
    for p in _files(base, pattern):
        if cfg.type == "jsonl":
            part = read_jsonl(p, skips)
        elif cfg.type == "json":
            part = read_json(p, cfg.records_key)
        elif cfg.type == "csv":
            part = read_csv(p, delimiter=cfg.delimiter, skips=skips)
        else:
            part = read_tar_csv(p, skips=skips)
        rows += _transform(cfg, base, p, part, skips)
    return rows


def _arc(rows: list[dict]) -> list[dict]:
    out = []
    for r in rows:
        choices = r["question"]["choices"]
        labels = [c["label"] for c in choices]
        d = {"id": r["id"], "question": r["question"]["stem"], "options": [c["text"] for c in choices],
             "answer": str(labels.index(r["answerKey"]))}
        d.update({LETTERS[i]: c["text"] for i, c in enumerate(choices)})
        out.append(d)
    return out


def _mmlu(base: Path, cfg: LoaderConfig) -> dict[str, list[dict]]:
    def norm(r: dict, subject: str) -> dict:
        opts = [r[f"choice{i}"] for i in range(4)]
        return {"question": r["question"], **dict(zip("ABCD", opts)), "options": opts,
                "answer": "ABCD"[int(r["answer"])], "subject": subject,
                "subject_name": subject.replace("_", " ")}

    tar = _file(base, cfg.test or "mmlu_test_csv.tar.gz")
    test = [norm(r, r["_file"].removesuffix("_test.csv")) for r in read_tar_csv(tar)]
    dev_dir = base / (cfg.dev or "dev")
    dev = []
    for f in sorted(dev_dir.glob("*_dev.csv")) if dev_dir.is_dir() else []:
        dev += [norm(r, f.name.removesuffix("_dev.csv")) for r in read_csv(f)]
    return {"test": test, "dev": dev}


def _with_labels(rows: list[dict], base: Path, labels: str, offset: int) -> list[dict]:
    lines = [x.strip() for x in _file(base, labels).read_text().splitlines() if x.strip()]
    if len(lines) < len(rows):
        raise ValueError(f"{labels}: {len(lines)} labels for {len(rows)} rows")
    return [{**r, "answer": str(int(lab) - offset)} for r, lab in zip(rows, lines)]


def _piqa(base: Path, cfg: LoaderConfig, skips: Skips) -> list[dict]:
    rows = read_jsonl(_file(base, cfg.test or "valid.jsonl"), Skips(strict=True))
    rows = [{**r, "options": [r["sol1"], r["sol2"]]} for r in rows]
    return _with_labels(rows, base, cfg.labels or "valid-labels.lst", 0)


def _winogrande(base: Path, cfg: LoaderConfig, skips: Skips) -> list[dict]:
    rows = read_jsonl(_file(base, cfg.test or "dev.jsonl"), Skips(strict=True))
    out = []
    for r in rows:
        opts = [r["sentence"].replace("_", r[f"option{i}"]) for i in (1, 2)]
        out.append({**r, "options": opts})
    return _with_labels(out, base, cfg.labels or "dev-labels.lst", 1)


def _hellaswag(base: Path, cfg: LoaderConfig) -> list[dict]:
    """The 6-lines-per-item text layout: context, label, four endings."""
    with _open_text(_file(base, cfg.test or "hellaswag_val_full.txt.bz2")) as f:
        lines = f.read().split("\n")
    rows = []
    for i in range(0, len(lines) - 5, 6):
        ctx, label, *endings = lines[i:i + 6]
        rows.append({"ctx": ctx, "options": endings, "answer": str(int(label))})
    return rows


def _squad(path: Path) -> list[dict]:
    rows = []
    for art in read_json(path):
        for p in art["paragraphs"]:
            for qa in p["qas"]:
                answers = [a["text"] for a in qa["answers"]]
                rows.append({"id": qa["id"], "context": p["context"], "question": qa["question"],
                             "answers": answers, "answer": answers[0] if answers else ""})
    return rows


def _humaneval(path: Path, skips: Skips) -> list[dict]:
    return [{**r, "answer": r["canonical_solution"]} for r in read_jsonl(path, skips)]


def _mt_bench(base: Path, cfg: LoaderConfig, skips: Skips) -> list[dict]:
    rows = read_jsonl(_file(base, cfg.test or "question.jsonl"), skips)
    refs: dict[int, list[str]] = {}
    ref_file = (base if base.is_dir() else base.parent) / "reference_answer" / "gpt-4.jsonl"
    if ref_file.exists():
        for r in read_jsonl(ref_file):
            refs[r["question_id"]] = r["choices"][0]["turns"]
    return [{**r, "reference": r.get("reference") or refs.get(r["question_id"], []), "answer": ""} for r in rows]


def load_rows(cfg: LoaderConfig, base: Path) -> dict[str, list]:
    """All splits of a dataset: {"test": [...], "dev": [...], "skipped": ["file:line: reason", ...]}
    ("dev" may be empty). Raises DatasetError (a one-line message) when the data cannot be read."""
    if not base.exists():
        raise DatasetError(f"dataset path {base} not found")
    skips = Skips(cfg.strict)
    try:
        out = _load(cfg, base, skips)
    except (KeyError, IndexError, ValueError, TypeError) as e:
        if isinstance(e, DatasetError):
            raise
        raise DatasetError(f"{base}: the {cfg.type} loader cannot read this layout ({type(e).__name__}: {e})") from None
    out["test"] = _slice(out["test"], cfg.test_rows)
    out["dev"] = _slice(out["dev"], cfg.dev_rows)
    out["skipped"] = skips.items
    return out


def _load(cfg: LoaderConfig, base: Path, skips: Skips) -> dict[str, list]:
    t = cfg.type
    if t == "mmlu":
        return _mmlu(base, cfg)
    if t in ("jsonl", "json", "csv", "tar.gz"):
        default = {"jsonl": "test.jsonl", "json": "test.json", "csv": "test.csv", "tar.gz": "test.tar.gz"}[t]
        test = _generic(cfg, base, cfg.test or default, skips)
        dev = _generic(cfg, base, cfg.dev, skips) if cfg.dev else []
        if cfg.dev and cfg.dev == cfg.test and not (cfg.test_rows or cfg.dev_rows):
            raise DatasetError("loader.dev is the test file: set loader.test_rows / loader.dev_rows to split it")
        return {"test": test, "dev": dev}
    if t == "arc":
        return {"test": _arc(read_jsonl(_file(base, cfg.test), skips)),
                "dev": _arc(read_jsonl(_file(base, cfg.dev), skips)) if cfg.dev else []}
    if t == "piqa":
        return {"test": _piqa(base, cfg, skips), "dev": []}
    if t == "winogrande":
        return {"test": _winogrande(base, cfg, skips), "dev": []}
    if t == "hellaswag":
        return {"test": _hellaswag(base, cfg), "dev": []}
    if t == "squad":
        return {"test": _squad(_file(base, cfg.test or "cmrc2018_dev.squad.json")),
                "dev": _squad(_file(base, cfg.dev)) if cfg.dev else []}
    if t == "humaneval":
        return {"test": _humaneval(_file(base, cfg.test or "HumanEval.jsonl.gz"), skips), "dev": []}
    return {"test": _mt_bench(base, cfg, skips), "dev": []}
