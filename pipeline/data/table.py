"""A table: a CSV or Parquet file (by its suffix: ``.csv``, ``.tsv``, ``.parquet``/``.pq``) with
one row per sample, a label column and numeric feature columns. The features of a row become a
1-channel sequence of length ``len(features)`` (every family takes it; ``normalize: auto`` scales
each column on its own). One pool split by ``prepare``, or a given test file (``test_path``, the
same columns). A non-numeric feature column is an error naming it: encode it first (one-hot or
ordinal) or leave it out with ``feature_columns``.

A missing feature value is an error naming its row and column (``missing: error``), or its row is
left out (``missing: drop``; the card counts them). A column with a blank header, which pandas
names ``Unnamed: N`` (a row index written by ``DataFrame.to_csv`` without ``index=False``), is
not a feature unless ``feature_columns`` names it: a row number would let a model learn the file's
order."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from pipeline.data.source import DataError, Loaded, Source, SourceParams, register_source

READERS = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet"}


class TableParams(SourceParams):
    path: str = ""
    label_column: str = "label"
    # Empty: every column but the label.
    feature_columns: list[str] = []
    # A given test split (the same columns); empty: prepare splits off test_fraction.
    test_path: str = ""
    # A missing feature value: error (naming row and column) | drop (its row).
    missing: Literal["error", "drop"] = "error"


def read_table(path: Path, key: str):
    import pandas as pd

    kind = READERS.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"{key}={str(path)!r}: unknown table format {path.suffix!r}; expected {', '.join(READERS)}")
    if not path.is_file():
        raise DataError(f"{key}={str(path)!r}: file not found")
    try:
        if kind == "parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path, sep="\t" if kind == "tsv" else ",")
    except Exception as err:  # the readers' own parse errors: name the file
        raise DataError(f"{key}={str(path)!r}: not a readable {kind} table ({type(err).__name__}: {err})") from None


@register_source("table")
class Table(Source):
    Params = TableParams
    default_normalization = "feature"

    def check(self, params: TableParams) -> None:
        if not params.path:
            raise ValueError("@path: dataset 'table' needs data.table.path (a .csv or .parquet file)")
        if params.label_column in params.feature_columns:
            raise ValueError(f"@feature_columns: holds the label column {params.label_column!r}")

    def describe(self, params: TableParams) -> str:
        return f"data.table.path={params.path!r}"

    def load(self, params: TableParams) -> Loaded:
        files = {"all" if not params.test_path else "train": ("data.table.path", Path(params.path))}
        if params.test_path:
            files["test"] = ("data.table.test_path", Path(params.test_path))
        splits, names, features, dropped, blank = {}, {}, None, {}, []
        for split, (key, path) in files.items():
            where = f"{key}={str(path)!r}"
            frame = read_table(path, key)
            if params.label_column not in frame.columns:
                raise DataError(f"{where}: no label column {params.label_column!r} (data.table.label_column); "
                                f"columns: {', '.join(map(str, frame.columns))}")
            frame.columns = [str(c) for c in frame.columns]
            cols = list(params.feature_columns)
            if not cols:
                blank = [c for c in frame.columns if c.startswith("Unnamed: ")]
                cols = [c for c in frame.columns if c != params.label_column and c not in blank]
            missing = [c for c in cols if c not in frame.columns]
            if missing:
                raise DataError(f"{where}: no column(s) {missing} (data.table.feature_columns)")
            if not cols:
                raise DataError(f"{where}: no feature columns besides the label {params.label_column!r}")
            if features is not None and cols != features:
                raise DataError(f"{where}: its feature columns differ from data.table.path's: {cols} vs {features}")
            features = cols
            for c in cols:
                kind = frame[c].dtype.kind
                if kind not in "biuf":
                    raise DataError(f"{where}: column {c!r} is not numeric (dtype {frame[c].dtype}); encode it "
                                    f"(one-hot or ordinal) or leave it out with data.table.feature_columns")
            y = frame[params.label_column]
            if y.isna().any():
                row = int(np.flatnonzero(y.isna().to_numpy())[0])
                raise DataError(f"{where}: the label column {params.label_column!r} is empty in row {row}")
            x = frame[cols].astype("float64").to_numpy(dtype=np.float64, na_value=np.nan)
            gaps = ~np.isfinite(x)
            if gaps.any() and params.missing == "drop":
                keep = ~gaps.any(axis=1)
                dropped[split] = int((~keep).sum())
                x, y = x[keep], y[keep]
            elif gaps.any():
                row, col = np.argwhere(gaps)[0]
                raise DataError(f"{where}: {int(gaps.sum())} missing or infinite feature value(s), the first in data "
                                f"row {row} (counting from 0), column {cols[col]!r}; fill them, or set "
                                f"data.table.missing: drop to leave such rows out")
            splits[split] = (x[:, None, :], y.to_numpy())
            names[split] = where
        info = {"features": features, "label_column": params.label_column}
        if blank:
            info["columns_left_out"] = blank
            print(f"{names[next(iter(names))]}: column(s) {blank} have a blank header (a written row index?): "
                  "not features; name them in data.table.feature_columns to use them", flush=True)
        if params.missing == "drop":
            info["rows_dropped_for_missing_values"] = dropped
        return Loaded(splits, "sequence", names, info=info)
