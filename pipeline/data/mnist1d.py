"""MNIST-1D (Greydanus 2020), generated locally from its templates by the ``mnist1d`` package: no
download. One pool of 1-channel sequences of length 40, ten classes, split by ``prepare``."""
from __future__ import annotations

import numpy as np
from pydantic import Field

from pipeline.data.source import Loaded, Source, SourceParams, register_source


class Mnist1dParams(SourceParams):
    """Arguments of the ``mnist1d`` generator."""

    num_samples: int = Field(5000, ge=100)
    shuffle_seq: bool = False
    iid_noise_scale: float = Field(0.02, ge=0)
    corr_noise_scale: float = Field(0.25, ge=0)
    seed: int = 42


@register_source("mnist1d")
class Mnist1d(Source):
    Params = Mnist1dParams

    def load(self, params: Mnist1dParams) -> Loaded:
        from mnist1d.data import get_dataset_args, make_dataset

        state = np.random.get_state()  # mnist1d reseeds NumPy's global RNG: leave it as we found it
        try:
            args = get_dataset_args()
            args.num_samples = params.num_samples
            args.shuffle_seq = params.shuffle_seq
            args.iid_noise_scale = params.iid_noise_scale
            args.corr_noise_scale = params.corr_noise_scale
            args.seed = params.seed
            args.train_split = 1.0  # one pool: prepare splits train/val/test the same way for every source
            d = make_dataset(args)
        finally:
            np.random.set_state(state)
        return Loaded({"all": (d["x"].astype(np.float32), d["y"].astype(np.int64))}, "sequence",
                      {"all": "data.dataset='mnist1d'"})
