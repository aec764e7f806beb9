"""Eval datasets: rows from a loader, cut to `max_samples`, with a stable id per row."""

from __future__ import annotations

from dataclasses import dataclass

from puyu_jax.eval.config import DatasetConfig
from puyu_jax.eval.datasets.loaders import load_rows

__all__ = ["Dataset", "load_dataset", "load_rows"]


@dataclass(frozen=True)
class Dataset:
    """Loaded rows. `test[i]["_id"]` is the row id (the reader's id column, else the index)."""

    cfg: DatasetConfig
    test: list[dict]
    dev: list[dict]

    def gold(self, row: dict) -> str:
        return str(row.get(self.cfg.reader.output_column, ""))


def load_dataset(cfg: DatasetConfig) -> Dataset:
    """Reads the dataset's splits; keeps the first `max_samples` test rows when set."""
    splits = load_rows(cfg.loader, cfg.data_path())
    test = splits["test"][: cfg.max_samples] if cfg.max_samples else splits["test"]
    idc = cfg.reader.id_column
    test = [{**r, "_id": str(r[idc]) if idc else str(i)} for i, r in enumerate(test)]
    missing = [c for c in (*cfg.reader.input_columns, cfg.reader.output_column) if test and c not in test[0]]
    if missing:
        raise ValueError(f"dataset {cfg.name!r}: rows have no column(s) {missing}; columns: {sorted(test[0])}")
    return Dataset(cfg, test, splits.get("dev", []))
