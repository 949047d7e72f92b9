"""The ``prepare`` stage: raw arrays -> checked, laid out, split and saved with a data card.

Layout every model family accepts: sequences ``(N, C, L)`` and images ``(N, C, H, W)``, float32.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import paths
from pipeline.config import Params
from pipeline.data.sources import DataError, load_source

SPLITS = ("train", "val", "test")


def to_layout(x: np.ndarray, layout: str, where: str) -> tuple[np.ndarray, str]:
    """Return ``x`` as (N, C, L) for sequences or (N, C, H, W) for images."""
    if x.ndim < 2:
        raise DataError(f"{where}: x must have a sample axis and at least one feature axis, got shape {x.shape}")
    if layout == "auto":
        layout = {2: "sequence", 3: "image", 4: "image"}.get(x.ndim, "")
        if not layout:
            raise DataError(f"{where}: cannot infer the layout of x with shape {x.shape}; set data.npz.layout")
    if layout == "sequence":
        if x.ndim == 2:
            x = x[:, None, :]
        elif x.ndim != 3:
            raise DataError(f"{where}: with layout 'sequence' (data.npz.layout) x must be (N, L) or (N, C, L), "
                            f"got shape {x.shape}")
    elif layout == "image":
        if x.ndim == 3:
            x = x[:, None, :, :]
        elif x.ndim != 4:
            raise DataError(f"{where}: with layout 'image' (data.npz.layout) x must be (N, H, W) or (N, C, H, W), "
                            f"got shape {x.shape}")
    else:
        raise DataError(f"{where}: unknown layout {layout!r}; expected 'sequence' or 'image'")
    return x, layout


def check_arrays(x: np.ndarray, y: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise DataError(f"{where}: x must hold real numbers, got dtype {x.dtype}")
    if y.ndim != 1:
        raise DataError(f"{where}: y must be a 1-D array of labels, got shape {y.shape}")
    if len(x) != len(y):
        raise DataError(f"{where}: x has {len(x)} samples but y has {len(y)} labels")
    if len(y) == 0:
        raise DataError(f"{where}: the dataset is empty")
    x = x.astype(np.float32)
    bad = ~np.isfinite(x)
    if bad.any():
        first = np.argwhere(bad)[0].tolist()
        raise DataError(f"{where}: x holds {int(bad.sum())} NaN or infinite value(s), first at index {first}")
    if np.issubdtype(y.dtype, np.floating):
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise DataError(f"{where}: labels y must be integers, got non-integer values (dtype {y.dtype})")
    elif not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{where}: labels y must be integers, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if y.min() < 0:
        raise DataError(f"{where}: labels y must be in 0..num_classes-1, got {int(y.min())}")
    if len(np.unique(y)) < 2:
        raise DataError(f"{where}: labels y hold a single class ({int(y[0])}); a classifier needs at least 2")
    return x, y


def stratified_split(y: np.ndarray, val_fraction: float, test_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Deterministic split that keeps each class's share in every split (by rounding per class)."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_test = int(round(len(idx) * test_fraction))
        n_val = int(round(len(idx) * val_fraction))
        parts["test"].append(idx[:n_test])
        parts["val"].append(idx[n_test:n_test + n_val])
        parts["train"].append(idx[n_test + n_val:])
    return {s: rng.permutation(np.concatenate(p)) for s, p in parts.items()}


def content_hash(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(name.encode())
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class Prepared:
    arrays: dict[str, np.ndarray]
    card: dict


def prepare(params: Params) -> Prepared:
    cfg = params.data
    where = f"data.dataset={cfg.dataset!r}" if cfg.dataset != "npz" else f"data.npz.path={cfg.npz.path!r}"
    x, y, layout = load_source(cfg)
    x, y = check_arrays(np.asarray(x), np.asarray(y), where)
    x, layout = to_layout(x, layout, where)
    num_classes = int(y.max()) + 1
    split = stratified_split(y, cfg.val_fraction, cfg.test_fraction, params.base.seed)
    arrays: dict[str, np.ndarray] = {}
    for s in SPLITS:
        if len(split[s]) == 0:
            raise DataError(
                f"{where}: the {s} split is empty ({len(y)} samples with "
                f"val_fraction={cfg.val_fraction}, test_fraction={cfg.test_fraction}); use more samples"
            )
        arrays[f"x_{s}"] = x[split[s]]
        arrays[f"y_{s}"] = y[split[s]]
    card = {
        "dataset": cfg.dataset,
        "layout": layout,
        "input_shape": list(x.shape[1:]),
        "num_classes": num_classes,
        "num_samples": {s: int(len(split[s])) for s in SPLITS},
        "class_counts": {s: np.bincount(arrays[f"y_{s}"], minlength=num_classes).tolist() for s in SPLITS},
        "sha256": content_hash(arrays),
        "source": cfg.model_dump(),
        "split_seed": params.base.seed,
    }
    return Prepared(arrays, card)


def save(prepared: Prepared, dataset: str) -> tuple[Path, Path]:
    data_path, card_path = paths.prepared_data(dataset), paths.data_card(dataset)
    data_path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(data_path, **prepared.arrays)
    paths.write_json(prepared.card, card_path)
    return data_path, card_path


def load_prepared(dataset: str) -> Prepared:
    """Read what ``prepare`` wrote; say which stage to run when it is missing."""
    data_path, card_path = paths.prepared_data(dataset), paths.data_card(dataset)
    if not data_path.is_file() or not card_path.is_file():
        raise DataError(f"{data_path}: prepared data not found; run `python -m pipeline prepare` first")
    with np.load(data_path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    return Prepared(arrays, json.loads(card_path.read_text()))
