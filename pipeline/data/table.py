"""A table: a CSV or Parquet file (by its suffix: ``.csv``, ``.tsv``, ``.parquet``/``.pq``) with
one row per sample, a label column and numeric feature columns. The features of a row become a
1-channel sequence of length ``len(features)`` (every family takes it; ``normalize: auto`` scales
each column on its own). One pool split by ``prepare``, or a given test file (``test_path``, the
same columns).

A text (or categorical) feature column is one-hot encoded (``categorical: onehot``): one 0/1
feature per category, named ``column=value``, its categories those of the training file (all of
``path``: which values a column takes is no label information), in sorted order; a value the
training file lacks (in ``test_path``) sets none of them and is counted on the card. A column with
more than ``max_categories`` distinct values (an identifier, free text) is an error naming it, as
is every text column with ``categorical: error``. Date and time columns are errors: encode them
first, or leave them out with ``feature_columns``.

A missing feature value is an error naming its row and column (``missing: error``), or its row is
left out (``missing: drop``; the card counts them). A column with a blank header, which pandas
names ``Unnamed: N`` (a row index written by ``DataFrame.to_csv`` without ``index=False``), is
not a feature unless ``feature_columns`` names it: a row number would let a model learn the file's
order."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from pydantic import Field

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
    # A text feature column: onehot (a 0/1 feature per category) | error.
    categorical: Literal["onehot", "error"] = "onehot"
    # More distinct values than this in a text column: an error (an identifier or free text?).
    max_categories: int = Field(32, ge=2)


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
        categories: dict[str, list[str]] = {}  # of each text column, from the training file
        unseen: dict[str, dict[str, int]] = {}
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
            y = frame[params.label_column]
            if y.isna().any():
                row = int(np.flatnonzero(y.isna().to_numpy())[0])
                raise DataError(f"{where}: the label column {params.label_column!r} is empty in row {row}")
            x, feature_names, sources, unseen_here = _features(frame, cols, params, where, categories)
            if unseen_here:
                unseen[split] = unseen_here
            gaps = ~np.isfinite(x)
            if gaps.any() and params.missing == "drop":
                keep = ~gaps.any(axis=1)
                dropped[split] = int((~keep).sum())
                x, y = x[keep], y[keep]
            elif gaps.any():
                at = np.argwhere(gaps)
                row, col = at[0]
                count = len({(r, sources[c]) for r, c in at.tolist()})  # a text value is missing once, not per category
                raise DataError(f"{where}: {count} missing or infinite feature value(s), the first in data "
                                f"row {row} (counting from 0), column {sources[col]!r}; fill them, or set "
                                f"data.table.missing: drop to leave such rows out")
            splits[split] = (x[:, None, :], y.to_numpy())
            names[split] = where
        info = {"features": feature_names, "label_column": params.label_column}
        if categories:
            info["one_hot"] = categories
        if unseen:
            info["unseen_categories"] = unseen
            print(f"{names['test']}: values not in the training file, encoded as no category: {unseen['test']}",
                  flush=True)
        if blank:
            info["columns_left_out"] = blank
            print(f"{names[next(iter(names))]}: column(s) {blank} have a blank header (a written row index?): "
                  "not features; name them in data.table.feature_columns to use them", flush=True)
        if params.missing == "drop":
            info["rows_dropped_for_missing_values"] = dropped
        return Loaded(splits, "sequence", names, info=info)


def _features(frame, cols: list[str], params: TableParams, where: str, categories: dict[str, list[str]]):
    """The feature matrix of ``frame``'s ``cols`` (float, NaN where missing), the name of each of
    its columns, the table column each comes from, and per text column how many values were not
    among ``categories`` (filled from this frame where it holds no entry: the training file)."""
    import pandas as pd

    blocks, names, sources, unseen = [], [], [], {}
    for c in cols:
        column = frame[c]
        kind = column.dtype.kind
        if kind in "biuf":
            blocks.append(column.astype("float64").to_numpy(dtype=np.float64, na_value=np.nan)[:, None])
            names.append(c)
            sources.append(c)
            continue
        text = kind in "OSU" or isinstance(column.dtype, (pd.CategoricalDtype, pd.StringDtype))
        if not text or params.categorical == "error":
            hint = ("encode it (one-hot or ordinal)" if text else "encode it as numbers") + \
                " or leave it out with data.table.feature_columns"
            raise DataError(f"{where}: column {c!r} is not numeric (dtype {column.dtype}); {hint}"
                            + (" (data.table.categorical: onehot encodes text columns)" if text else ""))
        present = column.notna().to_numpy()
        values = column.astype(str).where(present)  # each value as its text, NaN where missing
        if c not in categories:
            found = sorted(set(values.dropna()))
            if len(found) > params.max_categories:
                raise DataError(f"{where}: text column {c!r} takes {len(found)} distinct values, more than "
                                f"data.table.max_categories ({params.max_categories}): an identifier or free text? "
                                f"Leave it out with data.table.feature_columns, or raise max_categories")
            categories[c] = found
        known = categories[c]
        onehot = np.stack([(values == v).to_numpy(dtype=np.float64) for v in known], axis=1) if known else \
            np.zeros((len(frame), 0))
        onehot[~present] = np.nan  # a missing value: missing in every column it became
        strangers = int((present & ~values.isin(known).to_numpy()).sum())
        if strangers:
            unseen[c] = strangers
        blocks.append(onehot)
        names += [f"{c}={v}" for v in known]
        sources += [c] * len(known)
    return np.concatenate(blocks, axis=1), names, sources, unseen  # cols is never empty (checked by load)
