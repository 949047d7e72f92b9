"""The user's own data through the commands a stage runs (prepare, train, evaluate), one family each:
a table file, an image folder with given train/ and test/ splits (with a model-library family,
examples/efficientnet.py), an npz with given splits. The UCR archive path runs through the real
``dvc repro`` in tests/test_e2e.py."""
import json

import numpy as np
import pytest
import yaml

from pipeline import cli, paths

from .conftest import ROOT, tiny_raw
from .test_sources import _images

FAST = {"evaluate.energy_rounds": 2, "evaluate.energy_min_duration_s": 0.05, "evaluate.latency_samples": 5,
        "train.max_epochs": 2}


def _table(d):
    import pandas as pd

    rng = np.random.default_rng(3)
    n = 120
    label = rng.integers(0, 3, n)
    frame = pd.DataFrame({"x1": label * 2.0 + rng.normal(0, 0.3, n), "x2": rng.normal(size=n),
                          "species": np.array(["setosa", "versicolor", "virginica"])[label]})
    frame.to_parquet(d / "iris-like.parquet")
    return {"data.dataset": "table", "data.table": {"path": "iris-like.parquet", "label_column": "species"}}, "mlp"


def _image_folder(d):
    _images(d / "photos" / "train", ["cat", "dog"], 10, size=(8, 8), mode="RGB")
    _images(d / "photos" / "test", ["cat", "dog"], 4, size=(8, 8), mode="RGB")
    return {"data.dataset": "images", "data.images": {"path": "photos", "image_size": 8},
            "models.efficientnet": {"target": "examples.efficientnet:efficientnet"}, "train.batch_size": 8}, "efficientnet"


def _npz_splits(d):
    rng = np.random.default_rng(4)
    y_tr, y_te = np.arange(60) % 2, np.arange(20) % 2
    x_tr = rng.normal(size=(60, 2, 24)) + y_tr[:, None, None]
    x_te = rng.normal(size=(20, 2, 24)) + y_te[:, None, None]
    np.savez(d / "series.npz", x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te)
    return {"data.dataset": "npz", "data.npz": {"path": "series.npz"}}, "rnn"


@pytest.mark.parametrize("make, test_size", [(_table, None), (_image_folder, 8), (_npz_splits, 20)],
                         ids=["table", "image-folder", "npz-splits"])
def test_own_data_through_prepare_train_evaluate(workdir, monkeypatch, capsys, make, test_size):
    monkeypatch.syspath_prepend(str(ROOT))  # examples/ importable, as from the project root
    overrides, family = make(workdir)
    raw = tiny_raw(**FAST, **overrides)
    raw["families"] = [family]
    (workdir / "params.yaml").write_text(yaml.safe_dump(raw))
    for argv in (["prepare"], ["train", "--family", family], ["evaluate", "--family", family]):
        assert cli.main(argv) == 0, capsys.readouterr().err
    card = json.loads(next((workdir / "data" / "prepared").glob("*.card.json")).read_text())
    if test_size is not None:  # a given test split is kept as it is
        assert card["num_samples"]["test"] == test_size
    m = json.loads(paths.evaluate_metrics(family, paths.BASELINE).read_text())
    assert 0 <= m["test_acc"] <= 1 and m["energy_per_1k_j"] > 0
    trained = json.loads(paths.train_metrics(family).read_text())
    assert trained["params"] > 0 and trained["energy_j"] > 0
