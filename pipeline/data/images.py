"""A folder of images in the ImageFolder layout: one sub-folder per class (its name is the label),
read with Pillow and resized to ``image_size``. Where the folder holds ``train/`` and ``test/``
(and optionally ``val/``), each with the class sub-folders, those splits are kept; otherwise the
images are one pool split by ``prepare``. ``mode``: ``grayscale`` (1 channel), ``rgb`` (3), or
``auto``: grayscale when every image is, else RGB."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pipeline.data.source import DataError, Loaded, Source, SourceParams, register_source

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


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

        root = Path(params.path)
        if not root.is_dir():
            raise DataError(f"{self.describe(params)}: not a directory")
        names = {p.name for p in _subdirs(root)}
        given = {"train", "test"} <= names
        folders = {s: root / s for s in ("train", "val", "test") if s in names} if given else {"all": root}
        scanned = {s: _scan(f) for s, f in folders.items()}
        resample = getattr(Image.Resampling, params.resample.upper())
        h, w = params.size
        images: dict[str, list[Image.Image]] = {}
        for split, items in scanned.items():
            images[split] = []
            for file, _ in items:
                try:
                    with Image.open(file) as im:
                        im.load()
                        images[split].append(im.copy())
                except (UnidentifiedImageError, OSError) as err:
                    raise DataError(f"{file}: not a readable image ({type(err).__name__}: {err})") from None
        if params.mode == "auto":
            gray = all(im.mode in ("1", "L", "I", "I;16", "F") for ims in images.values() for im in ims)
            mode = "L" if gray else "RGB"
        else:
            mode = "L" if params.mode == "grayscale" else "RGB"
        splits = {}
        for split, ims in images.items():
            arr = np.stack([np.asarray(im.convert(mode).resize((w, h), resample), dtype=np.float32) / 255.0
                            for im in ims])
            x = arr[:, None] if mode == "L" else arr.transpose(0, 3, 1, 2)
            splits[split] = (x, np.array([label for _, label in scanned[split]]))
        info = {"image_size": [h, w], "mode": "grayscale" if mode == "L" else "rgb",
                "files": {s: len(items) for s, items in scanned.items()}}
        return Loaded(splits, "image", {s: str(f) for s, f in folders.items()}, info=info)
