"""Eval datasets: rows from a loader, cut to `max_samples`, with a stable id per row, checked
against the config (columns, template fields, options) before any model is loaded."""

from __future__ import annotations

from dataclasses import dataclass, field

from puyu_jax.eval.config import DatasetConfig, DatasetError
from puyu_jax.eval.datasets.loaders import load_rows

__all__ = ["Dataset", "DatasetError", "load_dataset", "load_rows", "validate_dataset"]

CHECK_ROWS = 3  # rows rendered by `validate_dataset`


@dataclass(frozen=True)
class Dataset:
    """Loaded rows. `test[i]["_id"]` is the row id (the reader's id column, else the index);
    `skipped` lists the malformed lines left out ("file:line: reason")."""

    cfg: DatasetConfig
    test: list[dict]
    dev: list[dict]
    skipped: list[str] = field(default_factory=list)

    def gold(self, row: dict) -> str:
        """The gold answer as text (the first one where the column holds several)."""
        v = row.get(self.cfg.reader.output_column, "")
        if isinstance(v, (list, tuple)):
            v = v[0] if v else ""
        return "" if v is None else str(v)


def _columns(rows: list[dict]) -> str:
    return ", ".join(sorted(k for k in rows[0] if not k.startswith("_"))) if rows else "(no rows)"


def load_dataset(cfg: DatasetConfig) -> Dataset:
    """Reads the dataset's splits; keeps the first `max_samples` test rows when set.

    Raises:
      DatasetError: unreadable data, or a reader column that the rows lack.
    """
    splits = load_rows(cfg.loader, cfg.data_path())
    test = splits["test"][: cfg.max_samples] if cfg.max_samples else splits["test"]
    if not test:
        raise DatasetError(f"dataset {cfg.name!r}: no rows in {cfg.data_path()}")
    r = cfg.reader
    for key, col in [*((f"reader.input_columns[{i}]", c) for i, c in enumerate(r.input_columns)),
                     ("reader.output_column", r.output_column), ("reader.id_column", r.id_column)]:
        if col and col not in test[0]:
            cols = [k for k in test[0] if not k.startswith("_")]
            hint = ("; one column whose name holds a separator: is loader.delimiter right?"
                    if len(cols) == 1 and any(c in cols[0] for c in "\t;,|") else "")
            raise DatasetError(f"dataset {cfg.name!r}: {key}={col!r} is not a column of "
                               f"{cfg.data_path()} (columns: {_columns(test)}){hint}")
    idc = r.id_column
    test = [{**row, "_id": str(row[idc]) if idc else str(i)} for i, row in enumerate(test)]
    if idc:
        seen: set[str] = set()
        for row in test:
            if row["_id"] in seen:
                raise DatasetError(f"dataset {cfg.name!r}: reader.id_column={idc!r} is not unique "
                                   f"({row['_id']!r} twice); leave it empty to number the rows")
            seen.add(row["_id"])
    return Dataset(cfg, test, splits.get("dev", []), splits.get("skipped", []))


def validate_dataset(cfg: DatasetConfig, meta: str = "") -> Dataset:
    """Loads a dataset and renders the prompt (and the options) of its first rows, so that a
    wrong column, template field or option setting fails here, before a model is loaded.

    Raises:
      DatasetError: a one-line message naming the dataset, the key and the columns there are.
    """
    ds = load_dataset(cfg)
    try:
        _render_first_rows(ds, meta)
    except DatasetError as e:
        raise (e if str(e).startswith("dataset ") else DatasetError(f"dataset {cfg.name!r}: {e}")) from None
    return ds


def _render_first_rows(ds: Dataset, meta: str) -> None:
    from puyu_jax.eval.prompts import build_prompt, continuations

    cfg = ds.cfg
    for row in ds.test[:CHECK_ROWS]:
        if cfg.inferencer.multi_turn:  # the turns are the prompts
            if not isinstance(row.get("turns"), list):
                raise DatasetError(f"dataset {cfg.name!r}: inferencer.multi_turn needs a list column 'turns'")
            continue
        build_prompt(ds, row, meta)
        if cfg.inferencer.type != "gen":
            labels = [lab for lab, _ in continuations(ds, row, meta)]
            gold = ds.gold(row)
            if gold not in labels:
                raise DatasetError(f"dataset {cfg.name!r}: row {row['_id']} has gold answer {gold!r} "
                                   f"(reader.output_column={cfg.reader.output_column!r}), not one of the "
                                   f"option labels {labels}")
