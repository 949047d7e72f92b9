"""A user's ``.npz`` file: arrays ``x`` (samples first) and ``y`` (labels), one pool split by
``prepare``; or given splits ``x_train, y_train, x_test, y_test`` (and optionally ``x_val,
y_val``), kept as they are."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from pipeline.data.source import DataError, Loaded, Source, SourceParams, register_source


class NpzParams(SourceParams):
    path: str = ""
    # auto: x of 2 dims is a 1-channel sequence, 3 dims a 1-channel image, 4 dims a C-channel image.
    layout: Literal["auto", "sequence", "image"] = "auto"


def to_layout(x: np.ndarray, layout: str, where: str) -> tuple[np.ndarray, str]:
    """``x`` as (N, C, L) for sequences or (N, C, H, W) for images."""
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
    elif x.ndim == 3:
        x = x[:, None, :, :]
    elif x.ndim != 4:
        raise DataError(f"{where}: with layout 'image' (data.npz.layout) x must be (N, H, W) or (N, C, H, W), "
                        f"got shape {x.shape}")
    return x, layout


@register_source("npz")
class Npz(Source):
    Params = NpzParams

    def check(self, params: NpzParams) -> None:
        if not params.path:
            raise ValueError("@path: dataset 'npz' needs data.npz.path (a .npz file with arrays x and y, "
                             "or x_train, y_train, x_test, y_test)")

    def describe(self, params: NpzParams) -> str:
        return f"data.npz.path={params.path!r}"

    def load(self, params: NpzParams) -> Loaded:
        path = Path(params.path)
        where = self.describe(params)
        if not path.is_file():
            raise DataError(f"{where}: file not found")
        try:
            with np.load(path, allow_pickle=False) as f:
                names = set(f.files)
                if {"x_train", "y_train", "x_test", "y_test"} <= names:
                    splits = [s for s in ("train", "val", "test") if f"x_{s}" in names]
                    if ("y_val" in names) != ("x_val" in names):
                        raise DataError(f"{where}: x_val and y_val go together; the file has {sorted(names)}")
                    raw = {s: (f[f"x_{s}"], f[f"y_{s}"]) for s in splits}
                elif {"x", "y"} <= names:
                    raw = {"all": (f["x"], f["y"])}
                else:
                    raise DataError(f"{where}: expected arrays x and y, or x_train, y_train, x_test and y_test; "
                                    f"the file has {sorted(names)}")
        except DataError:
            raise
        except Exception as err:  # zip/pickle/format errors: say what file and why
            raise DataError(f"{where}: not a readable .npz file ({type(err).__name__}: {err})") from None
        out, layouts = {}, set()
        for split, (x, y) in raw.items():
            name = "x" if split == "all" else f"x_{split}"
            if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
                raise DataError(f"{where}: {name} must hold real numbers, got dtype {x.dtype}")
            x, layout = to_layout(x, params.layout, f"{where}: {name}")
            layouts.add(layout)
            out[split] = (x, y)
        shapes = {x.shape[1:] for x, _ in out.values()}
        if len(shapes) > 1 or len(layouts) > 1:
            raise DataError(f"{where}: the splits' samples differ in shape: "
                            + ", ".join(f"{s} {x.shape[1:]}" for s, (x, _) in out.items()))
        files = {s: f"{where} ({'x, y' if s == 'all' else f'x_{s}, y_{s}'})" for s in out}
        return Loaded(out, layouts.pop(), files)
