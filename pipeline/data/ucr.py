"""Time-series classification archives (UCR univariate, UEA multivariate), read with aeon's
loaders. The archive's own split is kept: its ``_TEST`` file is the test split (validation is a
stratified part of its ``_TRAIN`` file), so test accuracies compare with published ones.

``data.ucr.name`` names the problem. With ``data.ucr.path`` empty it is looked up among the
datasets aeon has locally (its wheel bundles a few, e.g. GunPoint, ArrowHead, OSULeaf, ACSF1,
BasicMotions, JapaneseVowels; nothing is downloaded); otherwise ``path`` is a directory holding
``<name>_TRAIN.<ext>`` and ``<name>_TEST.<ext>`` (or a ``<name>/`` folder with them, the archives'
layout) in one of the formats the archives are published in (``FORMATS``): ``.ts`` (aeon's and
the UEA archive's), ``.tsv`` (the UCR 2018 archive's: the label, then the values, tab-separated)
or Weka's ``.arff``. Series of unequal length (e.g. JapaneseVowels) are padded at the end to the
longest (``unequal_length: pad``, by ``prepare``, which records the lengths) or refused
(``error``); a ``.tsv`` or ``.arff`` file, which cannot declare lengths, writes a shorter series
with missing values after its end, and those end it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from pipeline.data.source import DataError, Loaded, Source, SourceParams, register_source


class UcrParams(SourceParams):
    name: str = Field("GunPoint", min_length=1)
    path: str = ""
    unequal_length: Literal["pad", "error"] = "pad"
    # Missing values ('?' or NaN in a .ts file): error | interpolate (linearly along time, per channel).
    missing: Literal["error", "interpolate"] = "error"
    # File format: auto (the first of FORMATS whose two files are in the folder) | ts | tsv | arff.
    format: Literal["auto", "ts", "tsv", "arff"] = "auto"


#: The archives' file formats, in the order ``format: auto`` looks for them.
FORMATS = ("ts", "tsv", "arff")


def _bundled() -> tuple[Path, list[str]]:
    """Where aeon keeps the datasets its wheel ships, and their names."""
    import aeon.datasets
    from aeon.datasets.dataset_collections import get_downloaded_tsc_tsr_datasets

    root = Path(aeon.datasets.__file__).parent / "data"
    return root, get_downloaded_tsc_tsr_datasets(str(root))


def _files(params: UcrParams) -> tuple[dict[str, Path], str]:
    """The archive files of the train and test splits, and their format."""
    name = params.name
    if not params.path:
        if params.format not in ("auto", "ts"):
            raise DataError(f"data.ucr.format={params.format!r}: the datasets aeon ships are .ts files; "
                            f"set data.ucr.path to the folder holding {name}_TRAIN.{params.format}")
        root, bundled = _bundled()
        if name not in bundled:
            raise DataError(f"data.ucr.name={name!r}: not among the datasets aeon ships ({', '.join(bundled)}); "
                            f"nothing is downloaded: fetch the archive (timeseriesclassification.com) and set "
                            f"data.ucr.path to the folder holding {name}_TRAIN.ts and {name}_TEST.ts")
        return {"train": root / name / f"{name}_TRAIN.ts", "test": root / name / f"{name}_TEST.ts"}, "ts"
    base = Path(params.path)
    if not base.is_dir():
        raise DataError(f"data.ucr.path={params.path!r}: not a directory")
    formats = FORMATS if params.format == "auto" else (params.format,)
    for folder in (base, base / name):
        for fmt in formats:
            files = {"train": folder / f"{name}_TRAIN.{fmt}", "test": folder / f"{name}_TEST.{fmt}"}
            if all(f.is_file() for f in files.values()):
                return files, fmt
    wanted = " or ".join(f"{name}_TRAIN.{fmt} and {name}_TEST.{fmt}" for fmt in formats)
    raise DataError(f"data.ucr.path={params.path!r}: no {wanted} (looked in {base} and {base / name})")


def read_ts(file: Path) -> tuple[list[np.ndarray] | np.ndarray, np.ndarray, list[str] | None]:
    """Series, labels and declared classes of one ``.ts`` file; a list of series where the header
    says their lengths differ."""
    from aeon.datasets import load_from_ts_file

    try:
        x, y, meta = load_from_ts_file(str(file), return_meta_data=True)
    except (OSError, ValueError, IndexError, TypeError) as err:
        raise DataError(f"{file}: not a readable .ts classification file ({type(err).__name__}: {err})") from None
    if not meta.get("classlabel"):
        raise DataError(f"{file}: the header declares no class labels (@classLabel true ...); "
                        f"a regression problem is not a classification dataset")
    if isinstance(x, list) or not meta.get("equallength", True):
        x = [np.asarray(s, dtype=np.float64) for s in x]
    return x, np.asarray(y), [str(c) for c in meta.get("class_values") or []] or None


def read_tsv(file: Path) -> tuple[list[np.ndarray] | np.ndarray, np.ndarray, None]:
    """The UCR 2018 archive's ``.tsv``: a series a line, its label first."""
    from aeon.datasets import load_from_tsv_file

    try:
        x, y = load_from_tsv_file(str(file))
        x = np.asarray(x, dtype=np.float64)
    except (OSError, ValueError, IndexError, TypeError) as err:
        raise DataError(f"{file}: not a readable .tsv file (a label, then the values, tab-separated: "
                        f"{type(err).__name__}: {err})") from None
    return _ends(x), y, None


def read_arff(file: Path) -> tuple[list[np.ndarray] | np.ndarray, np.ndarray, list[str] | None]:
    """Weka's ``.arff`` (univariate, or multivariate with a relational attribute), the classes in
    the order of the header's last nominal attribute."""
    from aeon.datasets import load_from_arff_file

    try:
        x, y = load_from_arff_file(str(file))
        x = np.asarray(x, dtype=np.float64)
        declared = None
        with open(file, encoding="utf-8") as f:
            for line in f:
                if line.strip().lower().startswith("@data"):
                    break
                if line.strip().lower().startswith("@attribute") and "{" in line:
                    inside = line[line.index("{") + 1:line.rindex("}")]
                    declared = [c.strip().strip("'\"") for c in inside.split(",")]
    except (OSError, ValueError, IndexError, TypeError) as err:
        raise DataError(f"{file}: not a readable .arff classification file ({type(err).__name__}: {err})") from None
    if x.ndim != 3 or not len(x):
        raise DataError(f"{file}: no series after @data")
    return _ends(x), np.asarray([str(v).strip("'\"") for v in y]), declared


_READERS = {"ts": read_ts, "tsv": read_tsv, "arff": read_arff}


def _ends(x: np.ndarray) -> list[np.ndarray] | np.ndarray:
    """Series of a format that cannot declare lengths, each cut where every channel's values end
    (missing to the last step); a list where that leaves their lengths different."""
    observed = ~np.isnan(x).all(axis=1)  # (series, steps): some channel has a value
    lengths = np.where(observed.any(axis=1), x.shape[-1] - np.argmax(observed[:, ::-1], axis=1), 0)
    if np.all(lengths == x.shape[-1]):
        return x
    return [s[:, :n] for s, n in zip(x, lengths, strict=True)]


@register_source("ucr")
class Ucr(Source):
    Params = UcrParams

    def describe(self, params: UcrParams) -> str:
        return f"data.ucr.name={params.name!r}" + (f" in {params.path!r}" if params.path else "")

    def load(self, params: UcrParams) -> Loaded:
        files, fmt = _files(params)
        splits, declared, channels, interpolated = {}, None, set(), {}
        for split, file in files.items():
            x, y, classes = _READERS[fmt](file)
            if isinstance(x, list):
                if params.unequal_length == "error":
                    raise DataError(f"{file}: series of unequal length; set data.ucr.unequal_length: pad "
                                    f"to pad them at the end to the longest")
                if empty := [i for i, s in enumerate(x) if s.shape[-1] == 0]:
                    raise DataError(f"{file}: series {empty[0]} (counting from 0) has no values")
                channels |= {s.shape[0] for s in x}
            else:
                channels.add(np.asarray(x).shape[1])
            x, filled = _missing(x, file, params.missing)
            if filled:
                interpolated[split] = filled
            splits[split] = (x, y)
            declared = declared or classes
        if len(channels) > 1:
            raise DataError(f"{self.describe(params)}: series with different numbers of channels {sorted(channels)}")
        info = {"archive": params.name, "format": fmt}
        if params.missing == "interpolate":
            info["missing_values_interpolated"] = interpolated
        return Loaded(splits, "sequence", {s: str(f) for s, f in files.items()}, classes=declared, info=info)


def _missing(x, file: Path, how: str):
    """Series with their missing values (NaN) refused (``error``), or filled (``interpolate``):
    linearly between the observed steps of each channel, the first or last observed value before
    or after them, as the UCR archive's own adjusted versions of such problems do. Returns the
    series and how many values were filled."""
    series = x if isinstance(x, list) else list(x)
    filled = 0
    for i, s in enumerate(series):
        gaps = np.isnan(s)
        if not gaps.any():
            continue
        if how == "error":
            channel, step = np.argwhere(gaps)[0]
            total = sum(int(np.isnan(t).sum()) for t in series)
            raise DataError(f"{file}: {total} missing value(s), the first in series {i}, channel {channel}, step "
                            f"{step} (counting from 0); set data.ucr.missing: interpolate to fill them linearly "
                            f"along time")
        s = np.array(s, dtype=np.float64)
        steps = np.arange(s.shape[-1])
        for channel, row in enumerate(s):
            known = ~np.isnan(row)
            if not known.any():
                raise DataError(f"{file}: series {i}, channel {channel} has no observed value to interpolate from")
            s[channel] = np.interp(steps, steps[known], row[known])
        filled += int(gaps.sum())
        series[i] = s
    if not filled:
        return x, 0
    return (series if isinstance(x, list) else np.stack(series)), filled
