"""scikit-learn's handwritten digits: 1,797 8x8 images (pixel values 0..16 scaled to 0..1), ten
classes, shipped with scikit-learn (no download). One pool, split by ``prepare``."""
from __future__ import annotations

import numpy as np

from pipeline.data.source import Loaded, Source, SourceParams, register_source


class DigitsParams(SourceParams):
    """No parameters."""


@register_source("digits")
class Digits(Source):
    Params = DigitsParams

    def load(self, params: DigitsParams) -> Loaded:
        from sklearn.datasets import load_digits

        d = load_digits()
        x = d.images.astype(np.float32) / 16.0  # pixel values 0..16 -> 0..1
        return Loaded({"all": (x, d.target.astype(np.int64))}, "image", {"all": "data.dataset='digits'"})
