"""Dataset registry: each source returns raw arrays ``x`` (samples first) and integer labels ``y``.

Nothing is downloaded: MNIST-1D is generated from its templates by the ``mnist1d`` package and
scikit-learn ships the ``digits`` images. Any other data comes in as a user ``.npz`` file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from pipeline.config import DataCfg


class DataError(ValueError):
    """Data that cannot be used; the message names the file or key and what was expected."""


def load_mnist1d(cfg: DataCfg) -> tuple[np.ndarray, np.ndarray, str]:
    from mnist1d.data import get_dataset_args, make_dataset

    state = np.random.get_state()  # mnist1d reseeds NumPy's global RNG: leave it as we found it
    try:
        args = get_dataset_args()
        args.num_samples = cfg.mnist1d.num_samples
        args.shuffle_seq = cfg.mnist1d.shuffle_seq
        args.iid_noise_scale = cfg.mnist1d.iid_noise_scale
        args.corr_noise_scale = cfg.mnist1d.corr_noise_scale
        args.seed = cfg.mnist1d.seed
        args.train_split = 1.0  # we split train/val/test ourselves, the same way for every source
        d = make_dataset(args)
    finally:
        np.random.set_state(state)
    return d["x"].astype(np.float32), d["y"].astype(np.int64), "sequence"


def load_digits(cfg: DataCfg) -> tuple[np.ndarray, np.ndarray, str]:
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = d.images.astype(np.float32) / 16.0  # pixel values 0..16 -> 0..1
    return x, d.target.astype(np.int64), "image"


def load_npz(cfg: DataCfg) -> tuple[np.ndarray, np.ndarray, str]:
    path = Path(cfg.npz.path)
    where = f"data.npz.path={str(path)!r}"
    if not path.is_file():
        raise DataError(f"{where}: file not found")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in ("x", "y") if k not in f.files]
            if missing:
                raise DataError(f"{where}: missing array(s) {missing}; the file has {f.files}")
            x, y = f["x"], f["y"]
    except DataError:
        raise
    except Exception as err:  # zip/pickle/format errors: say what file and why
        raise DataError(f"{where}: not a readable .npz file ({type(err).__name__}: {err})") from None
    return x, y, cfg.npz.layout


SOURCES: dict[str, Callable[[DataCfg], tuple[np.ndarray, np.ndarray, str]]] = {
    "mnist1d": load_mnist1d,
    "digits": load_digits,
    "npz": load_npz,
}


def load_source(cfg: DataCfg) -> tuple[np.ndarray, np.ndarray, str]:
    try:
        loader = SOURCES[cfg.dataset]
    except KeyError:
        raise DataError(f"data.dataset: unknown dataset {cfg.dataset!r}; known: {sorted(SOURCES)}") from None
    return loader(cfg)
