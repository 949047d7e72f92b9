"""The ``prepare`` stage: a source's raw data -> checked, labelled, split, normalised and saved
with a data card. The same for every source (``pipeline.data.source``).

Layout every model family accepts: sequences ``(N, C, L)`` and images ``(N, C, H, W)``, float32,
labels ``0..K-1`` (the card's ``classes`` maps them back to the source's labels).
"""
from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import paths
from pipeline.config import Params
from pipeline.data.source import POOL, DataError, Loaded, get_source

SPLITS = ("train", "val", "test")


def _as_series(x, layout: str, where: str) -> list[np.ndarray] | np.ndarray:
    """``x`` as a float array (N, C, L) or (N, C, H, W), a channel axis added where it has none,
    or a list of (C, L_i) float arrays; checked."""
    if isinstance(x, list):
        return [_finite(np.asarray(s).reshape((1, -1) if np.ndim(s) == 1 else np.shape(s)), f"{where}, sample {i}")
                for i, s in enumerate(x)]
    x = _finite(np.asarray(x), where)
    ndim = {"sequence": 3, "image": 4}[layout]
    if x.ndim == ndim - 1:
        x = x[:, None]
    if x.ndim != ndim:
        raise DataError(f"{where}: {layout} samples must be {'(N, C, L)' if ndim == 3 else '(N, C, H, W)'} "
                        f"(or without the channel axis), got shape {x.shape}")
    return x


def _finite(x: np.ndarray, where: str) -> np.ndarray:
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise DataError(f"{where}: x must hold real numbers, got dtype {x.dtype}")
    x = x.astype(np.float32)
    bad = ~np.isfinite(x)
    if bad.any():
        first = np.argwhere(bad)[0].tolist()
        raise DataError(f"{where}: x holds {int(bad.sum())} NaN or infinite value(s), first at index {first}")
    return x


def _label_values(y, where: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise DataError(f"{where}: labels must be a 1-D array, got shape {y.shape}")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)):
            raise DataError(f"{where}: labels hold NaN or infinite values")
        if not np.all(y == np.round(y)):
            raise DataError(f"{where}: labels must be integers or text, got non-integer numbers (dtype {y.dtype}): "
                            f"a regression target is not a class label")
        y = y.astype(np.int64)
    if y.dtype.kind not in "biuUSO":
        raise DataError(f"{where}: labels must be integers or text, got dtype {y.dtype}")
    if y.dtype.kind == "O":
        y = y.astype(str)
    return y


def _class_order(y_train: np.ndarray, declared: list | None) -> list:
    """The classes of the training split: in the source's declared order, else sorted (text that
    is all integers sorted as numbers, so "10" follows "9")."""
    present = {v.item() if hasattr(v, "item") else v for v in np.unique(y_train)}
    if declared:
        order = [c for c in declared if c in present or _num(c) in present]
        if len(order) == len(present):
            return [c if c in present else _num(c) for c in order]
    values = sorted(present, key=lambda v: (0, int(v), "") if _is_int_text(v) else (1, 0, str(v)))
    return values


def _is_int_text(v) -> bool:
    try:
        int(str(v))
        return True
    except ValueError:
        return False


def _num(c):
    return int(c) if _is_int_text(c) else c


def _encode(y: np.ndarray, classes: list, where: str, train_where: str) -> np.ndarray:
    index = {str(c): i for i, c in enumerate(classes)}
    keys = y.astype(str)
    unknown = sorted(set(keys.tolist()) - set(index))
    if unknown:
        raise DataError(f"{where}: label(s) {unknown[:10]} do not occur in the training split ({train_where}); "
                        f"a model cannot learn them")
    return np.array([index[k] for k in keys.tolist()], dtype=np.int64)


def stratified_split(y: np.ndarray, val_fraction: float, test_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Deterministic split that keeps each class's share in every split. Each split takes its
    fraction of all samples (rounded once, not per class), each class its share of that rounded
    down and the remaining samples one each to the classes whose share was cut most (ties drawn
    by ``seed``), so that many small classes still give a validation split; every class keeps at
    least one sample for training."""
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    n_test = _allocate(counts, test_fraction, counts - 1, rng)
    n_val = _allocate(counts, val_fraction, counts - 1 - n_test, rng)
    parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for c, t, v in zip(classes, n_test, n_val, strict=True):
        idx = rng.permutation(np.flatnonzero(y == c))
        parts["test"].append(idx[:t])
        parts["val"].append(idx[t:t + v])
        parts["train"].append(idx[t + v:])
    return {s: rng.permutation(np.concatenate(p)) for s, p in parts.items()}


def _allocate(counts: np.ndarray, fraction: float, cap: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Samples of each class for a split of ``fraction`` of them all (largest remainders), at most
    ``cap`` of a class."""
    share = counts * fraction
    n = np.minimum(np.floor(share).astype(np.int64), cap)
    total = min(int(np.floor(counts.sum() * fraction + 0.5)), int(cap.sum()))
    short = total - int(n.sum())
    if short > 0:
        open_ = np.flatnonzero(n < cap)
        order = open_[np.lexsort((rng.random(len(open_)), -(share - n)[open_]))]
        n[order[:short]] += 1
    return n


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


def _take(x, idx: np.ndarray):
    return [x[i] for i in idx] if isinstance(x, list) else x[idx]


def _split(loaded: Loaded, params: Params, where: str) -> tuple[dict[str, tuple], str]:
    """Train, val and test ``(x, y)`` (labels as read), and how they were made."""
    cfg, seed = params.data, params.base.seed
    if set(loaded.splits) == set(POOL):
        x, y = loaded.splits["all"]
        idx = stratified_split(y.astype(str), cfg.val_fraction, cfg.test_fraction, seed)
        how = (f"one pool split by prepare, stratified by class: test_fraction {cfg.test_fraction}, "
               f"val_fraction {cfg.val_fraction}, seed {seed}")
        return {s: (_take(x, idx[s]), y[idx[s]]) for s in SPLITS}, how
    out = {s: loaded.splits[s] for s in ("train", "test")}
    if "val" in loaded.splits:
        out["val"] = loaded.splits["val"]
        return out, "train, val and test as given by the source"
    x, y = out["train"]
    idx = stratified_split(y.astype(str), cfg.val_fraction, 0.0, seed)
    out["train"], out["val"] = (_take(x, idx["train"]), y[idx["train"]]), (_take(x, idx["val"]), y[idx["val"]])
    return out, (f"train and test as given by the source; val: a stratified val_fraction {cfg.val_fraction} "
                 f"of the given train split (seed {seed})")


def _normalize(xs: dict[str, list | np.ndarray], mode: str, where: str) -> tuple[dict, dict, dict]:
    """``xs`` scaled by the training split's statistics: arrays, the statistics (saved beside the
    data) and their summary for the card."""
    if mode == "none":
        return xs, {}, {"mode": "none"}
    train = xs["train"]
    if isinstance(train, list):
        if mode == "feature":
            raise DataError(f"{where}: normalize 'feature' needs samples of one shape; these series differ in "
                            f"length: use data.normalize: channel")
        flat = np.concatenate(train, axis=-1)  # (C, total length): every valid time step of every series
        mean, std = flat.mean(axis=-1), flat.std(axis=-1)
    elif mode == "channel":
        axes = (0, *range(2, train.ndim))
        mean, std = train.mean(axis=axes), train.std(axis=axes)
    else:
        mean, std = train.mean(axis=0), train.std(axis=0)
    std = np.where(std > 0, std, 1.0).astype(np.float32)  # a constant channel/feature is only centred
    mean = mean.astype(np.float32)
    shape = mean.shape + (1,) * (train[0].ndim - mean.ndim) if mode == "channel" else mean.shape
    m, sd = mean.reshape(shape), std.reshape(shape)
    out = {s: ([(v - m) / sd for v in x] if isinstance(x, list) else (x - m[None]) / sd[None]) for s, x in xs.items()}
    summary = {"mode": mode, "from": "train split"}
    if mode == "channel":
        summary |= {"mean": mean.tolist(), "std": std.tolist()}
    else:
        summary |= {"saved_as": ["norm_mean", "norm_std"], "shape": list(mean.shape)}
    return out, {"norm_mean": mean, "norm_std": std}, summary


def _pad(xs: dict[str, list | np.ndarray]) -> tuple[dict[str, np.ndarray], dict | None]:
    """Series of unequal length padded at the end with zeros (after normalisation: the training
    mean) to the longest of any split; the lengths go on the card."""
    if not any(isinstance(x, list) for x in xs.values()):
        return xs, None
    length = max(v.shape[-1] for x in xs.values() for v in x)
    out = {}
    for s, x in xs.items():
        a = np.zeros((len(x), x[0].shape[0], length), dtype=np.float32)
        for i, v in enumerate(x):
            a[i, :, :v.shape[-1]] = v
        out[s] = a
    lengths = {s: [int(v.shape[-1]) for v in x] for s, x in xs.items()}
    card = {"padded_to": length, "padded_with": "0 at the end, after normalisation (the training mean)",
            "min": min(min(v) for v in lengths.values()), "max": length,
            "per_split": {s: {"min": min(v), "max": max(v)} for s, v in lengths.items()}}
    return out, card


def prepare(params: Params) -> Prepared:
    cfg = params.data
    source = get_source(cfg.dataset)
    sp = cfg.source_params
    where = source.describe(sp)
    loaded = source.load(sp)
    raw = {}
    for split, (x, y) in loaded.splits.items():
        file = loaded.files.get(split, where)
        x, y = _as_series(x, loaded.layout, file), _label_values(y, file)
        if len(x) != len(y):
            raise DataError(f"{file}: {len(x)} samples but {len(y)} labels")
        if len(y) == 0:
            raise DataError(f"{file}: the {'dataset' if split == 'all' else split + ' split'} is empty")
        raw[split] = (x, y)
    loaded.splits = raw
    raw_hash = content_hash({f"{k}_{s}": (np.concatenate([v.ravel() for v in x]) if isinstance(x, list) else x)
                             for s, (x, y) in raw.items() for k, x in (("x", x), ("y", y.astype(str)))})
    train_file = loaded.files.get("train", loaded.files.get("all", where))
    split_xy, how = _split(loaded, params, where)
    classes = _class_order(split_xy["train"][1], loaded.classes)
    if len(classes) < 2:
        raise DataError(f"{train_file}: the training split holds a single class ({classes[0]!r}); "
                        f"a classifier needs at least 2")
    ys = {}
    for s in SPLITS:
        x, y = split_xy[s]
        file = loaded.files.get(s, where)
        if len(y) == 0:
            _, per_class = np.unique(split_xy["train"][1].astype(str), return_counts=True)
            single = int((per_class == 1).sum())
            why = (f"; every class keeps a sample for training and {single} of {len(per_class)} classes have "
                   f"only one" if s != "train" and single else "")
            raise DataError(f"{file}: the {s} split is empty ({how}{why}); use more samples or larger fractions")
        ys[s] = _encode(y, classes, file, train_file)
    mode = source.default_normalization if cfg.normalize == "auto" else cfg.normalize
    xs, stats, norm_card = _normalize({s: split_xy[s][0] for s in SPLITS}, mode, where)
    xs, lengths = _pad(xs)
    shapes = {s: x.shape[1:] for s, x in xs.items()}
    if len(set(shapes.values())) > 1:
        raise DataError(f"{where}: the splits' samples differ in shape: {shapes}")
    arrays: dict[str, np.ndarray] = {}
    for s in SPLITS:
        arrays[f"x_{s}"] = np.ascontiguousarray(xs[s], dtype=np.float32)
        arrays[f"y_{s}"] = ys[s]
    arrays |= stats
    num_classes = len(classes)
    card = {
        "dataset": cfg.dataset,
        "name": loaded.info.get("archive", cfg.dataset),
        "layout": loaded.layout,
        "input_shape": list(arrays["x_train"].shape[1:]),
        "num_classes": num_classes,
        "classes": classes,
        "num_samples": {s: int(len(ys[s])) for s in SPLITS},
        "class_counts": {s: np.bincount(ys[s], minlength=num_classes).tolist() for s in SPLITS},
        "splits": how,
        "normalization": norm_card,
        **({"lengths": lengths} if lengths else {}),
        "sha256": content_hash(arrays),
        "raw_sha256": raw_hash,
        "source": {"dataset": cfg.dataset, **sp.model_dump(), "val_fraction": cfg.val_fraction,
                   "test_fraction": cfg.test_fraction, "normalize": cfg.normalize},
        "split_seed": params.base.seed,
        "files": {s: _shown(f) for s, f in loaded.files.items()},
        **{k: v for k, v in loaded.info.items() if k != "archive"},
    }
    return Prepared(arrays, card)


def _shown(file: str) -> str:
    """A file as the card names it: relative to the working directory when under it (the same on
    every clone of the project), else as given."""
    try:
        return str(Path(file).resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return file


def save(prepared: Prepared, dataset: str) -> tuple[Path, Path]:
    data_path, card_path = paths.prepared_data(dataset), paths.data_card(dataset)
    data_path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(data_path, **prepared.arrays)
    paths.write_json(prepared.card, card_path)
    return data_path, card_path


def load_prepared(dataset: str, arrays: bool = True) -> Prepared:
    """Read what ``prepare`` wrote (only its card where ``arrays`` is False); say which stage to
    run when it is missing."""
    data_path, card_path = paths.prepared_data(dataset), paths.data_card(dataset)
    if not data_path.is_file() or not card_path.is_file():
        raise DataError(f"{data_path}: prepared data not found; run `python -m pipeline prepare` first")
    loaded: dict[str, np.ndarray] = {}
    rerun = "run `python -m pipeline prepare` (or `dvc repro prepare`) again"
    try:
        card = json.loads(card_path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"{card_path}: not a readable data card ({type(err).__name__}: {err}); {rerun}") from None
    if arrays:
        try:
            with np.load(data_path, allow_pickle=False) as f:
                loaded = {k: f[k] for k in f.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            raise DataError(f"{data_path}: not a readable prepared file ({type(err).__name__}: {err}); {rerun}") from None
        absent = [k for s in SPLITS for k in (f"x_{s}", f"y_{s}") if k not in loaded]
        if absent:
            raise DataError(f"{data_path}: no {', '.join(absent)} (not written by this version's prepare); {rerun}")
    return Prepared(loaded, card)
