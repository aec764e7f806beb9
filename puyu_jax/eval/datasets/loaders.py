"""Dataset loaders: a file or directory -> {"test": rows, "dev": rows}, rows as plain dicts.

Generic loaders (jsonl, json, csv, tar.gz of csv files) keep the rows as they are; the
named ones turn a benchmark's own layout (as in shared/data/eval) into flat rows with an
`options` list and a string `answer` where the benchmark has choices.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import tarfile
from pathlib import Path

from puyu_jax.eval.config import LoaderConfig

LETTERS = "ABCDEFGH"


def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    if path.suffix == ".bz2":
        return bz2.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def read_jsonl(path: Path) -> list[dict]:
    with _open_text(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def read_json(path: Path) -> list[dict]:
    with _open_text(path) as f:
        data = json.load(f)
    if isinstance(data, dict) and "data" in data:
        data = data["data"]
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of records (or {{'data': [...]}})")
    return data


def read_csv(path: Path | io.TextIOBase, header: bool = True, fieldnames=None) -> list[dict]:
    f = _open_text(path) if isinstance(path, Path) else path
    with f:
        if header:
            return list(csv.DictReader(f, fieldnames=fieldnames))
        return [dict(zip(fieldnames, r)) for r in csv.reader(f)]


def read_tar_csv(path: Path, pattern: str = "") -> list[dict]:
    """Rows of every `.csv` member (sorted by name) of a tar.gz; each row gets a `_file` column."""
    rows = []
    with tarfile.open(path) as tf:
        for m in sorted((m for m in tf.getmembers() if m.isfile() and m.name.endswith(".csv")), key=lambda m: m.name):
            if pattern and pattern not in m.name:
                continue
            text = io.TextIOWrapper(tf.extractfile(m), encoding="utf-8")
            for r in read_csv(text):
                rows.append({**r, "_file": Path(m.name).name})
    return rows


def _file(base: Path, name: str) -> Path:
    if base.is_file():
        return base
    p = base / name
    if not p.exists():
        raise FileNotFoundError(f"dataset file {p} not found")
    return p


def _generic(cfg: LoaderConfig, base: Path, name: str) -> list[dict]:
    p = _file(base, name)
    if cfg.type == "jsonl":
        return read_jsonl(p)
    if cfg.type == "json":
        return read_json(p)
    if cfg.type == "csv":
        return read_csv(p)
    return read_tar_csv(p)


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


def _piqa(base: Path, cfg: LoaderConfig) -> list[dict]:
    rows = read_jsonl(_file(base, cfg.test or "valid.jsonl"))
    rows = [{**r, "options": [r["sol1"], r["sol2"]]} for r in rows]
    return _with_labels(rows, base, cfg.labels or "valid-labels.lst", 0)


def _winogrande(base: Path, cfg: LoaderConfig) -> list[dict]:
    rows = read_jsonl(_file(base, cfg.test or "dev.jsonl"))
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


def _humaneval(path: Path) -> list[dict]:
    return [{**r, "answer": r["canonical_solution"]} for r in read_jsonl(path)]


def _mt_bench(base: Path, cfg: LoaderConfig) -> list[dict]:
    rows = read_jsonl(_file(base, cfg.test or "question.jsonl"))
    refs: dict[int, list[str]] = {}
    ref_file = (base if base.is_dir() else base.parent) / "reference_answer" / "gpt-4.jsonl"
    if ref_file.exists():
        for r in read_jsonl(ref_file):
            refs[r["question_id"]] = r["choices"][0]["turns"]
    return [{**r, "reference": r.get("reference") or refs.get(r["question_id"], []), "answer": ""} for r in rows]


def load_rows(cfg: LoaderConfig, base: Path) -> dict[str, list[dict]]:
    """All splits of a dataset: {"test": [...], "dev": [...]} ("dev" may be empty)."""
    if not base.exists():
        raise FileNotFoundError(f"dataset path {base} not found")
    t = cfg.type
    if t == "mmlu":
        return _mmlu(base, cfg)
    if t in ("jsonl", "json", "csv", "tar.gz"):
        default = {"jsonl": "test.jsonl", "json": "test.json", "csv": "test.csv", "tar.gz": "test.tar.gz"}[t]
        test = _generic(cfg, base, cfg.test or default)
        dev = _generic(cfg, base, cfg.dev) if cfg.dev else []
        return {"test": test, "dev": dev}
    if t == "arc":
        return {"test": _arc(read_jsonl(_file(base, cfg.test))),
                "dev": _arc(read_jsonl(_file(base, cfg.dev))) if cfg.dev else []}
    if t == "piqa":
        return {"test": _piqa(base, cfg), "dev": []}
    if t == "winogrande":
        return {"test": _winogrande(base, cfg), "dev": []}
    if t == "hellaswag":
        return {"test": _hellaswag(base, cfg), "dev": []}
    if t == "squad":
        return {"test": _squad(_file(base, cfg.test or "cmrc2018_dev.squad.json")),
                "dev": _squad(_file(base, cfg.dev)) if cfg.dev else []}
    if t == "humaneval":
        return {"test": _humaneval(_file(base, cfg.test or "HumanEval.jsonl.gz")), "dev": []}
    return {"test": _mt_bench(base, cfg), "dev": []}
