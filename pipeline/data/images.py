"""A folder of images in the ImageFolder layout: one sub-folder per class (its name is the label),
read with Pillow and resized to ``image_size``. Where the folder holds ``train/`` and ``test/``
(and optionally ``val/``), each with the class sub-folders, those splits are kept; otherwise the
images are one pool split by ``prepare``. ``mode``: ``grayscale`` (1 channel), ``rgb`` (3), or
``auto``: grayscale when every image is, else RGB.

Pixels become 0..1 by the depth of each file: 8-bit images divided by 255, 16-bit ones (mode
``I;16``, and 32-bit integer ``I``, Pillow's container for 16-bit data) by 65,535; float images
(``F``) keep their values. Each image is decoded, converted and resized on its own, so memory holds
the resized arrays, never the full-size folder."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

import numpy as np

from pipeline.data.source import DataError, Loaded, Source, SourceParams, register_source

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F")
#: Full scale of the single-channel modes deeper than 8 bits (Pillow converts them to ``L`` by
#: clipping at 255, which would saturate a 16-bit image): pixels are divided by it.
DEEP_SCALE = {"I": 65535.0, "I;16": 65535.0, "I;16L": 65535.0, "I;16B": 65535.0, "I;16N": 65535.0, "F": 1.0}


class ImagesParams(SourceParams):
    path: str = ""
    # Height and width every image is resized to (one number: square).
    image_size: int | tuple[int, int] = 32
    mode: Literal["auto", "grayscale", "rgb"] = "auto"
    resample: Literal["bilinear", "nearest", "bicubic", "lanczos"] = "bilinear"

    @property
    def size(self) -> tuple[int, int]:
        return (self.image_size, self.image_size) if isinstance(self.image_size, int) else tuple(self.image_size)


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _scan(folder: Path) -> list[tuple[Path, str]]:
    """(image file, class name) of an ImageFolder directory."""
    classes = _subdirs(folder)
    if not classes:
        raise DataError(f"{folder}: no class sub-folders (the ImageFolder layout: <folder>/<class>/<image>)")
    out = []
    for c in classes:
        files = sorted(p for p in c.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
        if not files:
            raise DataError(f"{c}: no images ({', '.join(SUFFIXES)}) in the class folder {c.name!r}")
        out += [(f, c.name) for f in files]
    return out


@register_source("images")
class Images(Source):
    Params = ImagesParams

    def check(self, params: ImagesParams) -> None:
        if not params.path:
            raise ValueError("@path: dataset 'images' needs data.images.path (a folder with one sub-folder per class)")
        if min(params.size) < 1:
            raise ValueError(f"@image_size: must be at least 1 pixel, got {params.image_size}")

    def describe(self, params: ImagesParams) -> str:
        return f"data.images.path={params.path!r}"

    def load(self, params: ImagesParams) -> Loaded:
        from PIL import Image, UnidentifiedImageError
        from tqdm import tqdm

        root = Path(params.path)
        if not root.is_dir():
            raise DataError(f"{self.describe(params)}: not a directory")
        names = {p.name for p in _subdirs(root)}
        given = {"train", "test"} <= names
        folders = {s: root / s for s in ("train", "val", "test") if s in names} if given else {"all": root}
        scanned = {s: _scan(f) for s, f in folders.items()}
        resample = getattr(Image.Resampling, params.resample.upper())
        h, w = params.size

        def opened(file: Path):
            try:
                return Image.open(file)
            except (UnidentifiedImageError, OSError) as err:
                raise DataError(f"{file}: not a readable image ({type(err).__name__}: {err})") from None

        files = [file for items in scanned.values() for file, _ in items]
        if params.mode == "auto":  # the header says the mode: nothing decoded yet
            gray = True
            for file in files:
                with opened(file) as im:
                    gray = im.mode in GRAY_MODES
                if not gray:
                    break
            mode = "L" if gray else "RGB"
        else:
            mode = "L" if params.mode == "grayscale" else "RGB"
        # A bar on a terminal for folders that take a while to read.
        bar = tqdm(total=len(files), desc="read images", unit="image", disable=len(files) < 500 or not sys.stderr.isatty())
        splits = {}
        for split, items in scanned.items():
            arrays = []
            for file, _ in items:
                with opened(file) as im:
                    try:
                        arrays.append(_pixels(im, mode, (w, h), resample))
                    except (OSError, ValueError) as err:  # truncated or corrupt data behind a valid header
                        raise DataError(f"{file}: not a readable image ({type(err).__name__}: {err})") from None
                bar.update()
            x = np.stack(arrays)
            splits[split] = (x, np.array([label for _, label in items]))
        bar.close()
        info = {"image_size": [h, w], "mode": "grayscale" if mode == "L" else "rgb"}
        return Loaded(splits, "image", {s: str(f) for s, f in folders.items()}, info=info)


def _pixels(im, mode: str, size: tuple[int, int], resample) -> np.ndarray:
    """One image as float32 ``(C, H, W)`` in 0..1 (see the module for deeper images): converted
    to ``mode`` (``L`` or ``RGB``) and resized to ``size`` (width, height)."""
    scale = DEEP_SCALE.get(im.mode)
    if scale is None:
        arr = np.asarray(im.convert(mode).resize(size, resample), dtype=np.float32) / 255.0
        return arr[None] if mode == "L" else arr.transpose(2, 0, 1)
    gray = np.asarray(im.convert("F").resize(size, resample), dtype=np.float32) / scale
    return gray[None] if mode == "L" else np.repeat(gray[None], 3, axis=0)

