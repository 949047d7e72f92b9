import json

import numpy as np
import pytest

from pipeline import paths
from pipeline.data.prepare import load_prepared, prepare, save, stratified_split
from pipeline.data.source import DataError


def test_mnist1d_prepare_is_deterministic(tiny_params):
    a, b = prepare(tiny_params()), prepare(tiny_params())
    assert a.card["sha256"] == b.card["sha256"]
    for k in a.arrays:
        np.testing.assert_array_equal(a.arrays[k], b.arrays[k])
    assert a.card["input_shape"] == [1, 40] and a.card["num_classes"] == 10
    assert sum(a.card["num_samples"].values()) == 600


def test_generator_arguments_change_the_data(tiny_params):
    base = prepare(tiny_params())
    assert prepare(tiny_params(**{"data.mnist1d.seed": 1})).card["sha256"] != base.card["sha256"]
    assert prepare(tiny_params(**{"data.mnist1d.shuffle_seq": True})).card["sha256"] != base.card["sha256"]
    assert prepare(tiny_params(**{"base.seed": 8})).card["sha256"] != base.card["sha256"]  # another split


def test_mnist1d_leaves_numpy_global_rng_alone(tiny_params):
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    prepare(tiny_params())
    assert np.random.rand() == expected


def test_digits_are_images(tiny_params):
    """scikit-learn's digits become one-channel 8x8 images scaled from 0..16 to 0..1: the splits
    together hold every image exactly once (pixels divided by 16, nothing else) with its label."""
    from sklearn.datasets import load_digits

    p = prepare(tiny_params(**{"data.dataset": "digits", "data.normalize": "none"}))
    assert p.card["input_shape"] == [1, 8, 8] and p.card["layout"] == "image" and p.card["num_classes"] == 10
    d = load_digits()
    x = np.concatenate([p.arrays[f"x_{s}"] for s in ("train", "val", "test")])
    y = np.concatenate([p.arrays[f"y_{s}"] for s in ("train", "val", "test")])
    assert x.shape == (len(d.images), 1, 8, 8) and x.min() == 0.0 and x.max() == 1.0
    want = sorted((img.tobytes(), int(t)) for img, t in zip((d.images[:, None] / 16.0).astype(np.float32), d.target, strict=True))
    got = sorted((img.tobytes(), int(t)) for img, t in zip(x, y, strict=True))
    assert got == want


def test_split_is_stratified_and_disjoint():
    y = np.repeat(np.arange(4), 50)
    split = stratified_split(y, 0.2, 0.2, seed=0)
    all_idx = np.concatenate(list(split.values()))
    assert len(all_idx) == len(set(all_idx.tolist())) == 200
    for s, frac in (("val", 0.2), ("test", 0.2), ("train", 0.6)):
        assert np.bincount(y[split[s]]).tolist() == [int(50 * frac)] * 4


def test_card_is_written_with_counts(tiny_params, workdir):
    """The card on disk gives, per split, the number of samples and of each class that the saved
    arrays hold, and the content hash of those arrays; load_prepared gives both back unchanged."""
    from pipeline.data.prepare import content_hash

    prepared = prepare(tiny_params())
    save(prepared, "mnist1d")
    card = json.loads(paths.data_card("mnist1d").read_text())
    loaded = load_prepared("mnist1d")
    assert loaded.card == card
    for s in ("train", "val", "test"):
        y = loaded.arrays[f"y_{s}"]
        assert card["num_samples"][s] == len(y) == len(loaded.arrays[f"x_{s}"])
        assert card["class_counts"][s] == np.bincount(y, minlength=card["num_classes"]).tolist()
    assert card["sha256"] == content_hash(loaded.arrays)
    for k in prepared.arrays:
        np.testing.assert_array_equal(loaded.arrays[k], prepared.arrays[k])


@pytest.mark.parametrize(
    "x_shape, layout, expected",
    [((30, 12), "auto", [1, 12]), ((30, 6, 5), "auto", [1, 6, 5]), ((30, 3, 6, 5), "auto", [3, 6, 5]),
     ((30, 4, 12), "sequence", [4, 12])],
)
def test_npz_layouts(tiny_params, workdir, x_shape, layout, expected):
    rng = np.random.default_rng(0)
    np.savez(workdir / "d.npz", x=rng.normal(size=x_shape), y=np.arange(30) % 3)
    p = prepare(tiny_params(**{"data.dataset": "npz", "data.npz.path": "d.npz", "data.npz.layout": layout}))
    assert p.card["input_shape"] == expected and p.card["num_classes"] == 3


def _npz_error(tiny_params, workdir, **arrays):
    np.savez(workdir / "bad.npz", **arrays)
    with pytest.raises(DataError) as exc:
        prepare(tiny_params(**{"data.dataset": "npz", "data.npz.path": "bad.npz"}))
    return str(exc.value)


def test_npz_bad_inputs(tiny_params, workdir):
    x = np.zeros((30, 8))
    y = np.arange(30) % 3
    assert "expected arrays x and y" in _npz_error(tiny_params, workdir, x=x)
    assert "NaN or infinite" in _npz_error(tiny_params, workdir, x=np.where(x == 0, np.nan, x), y=y)
    assert "must be integers or text" in _npz_error(tiny_params, workdir, x=x, y=y + 0.5)
    assert "29 labels" in _npz_error(tiny_params, workdir, x=x, y=y[:29])
    assert "split is empty" in _npz_error(tiny_params, workdir, x=x[:2], y=y[:2])
    assert "1-D array" in _npz_error(tiny_params, workdir, x=x, y=y.reshape(15, 2))
    assert "x_val and y_val go together" in _npz_error(tiny_params, workdir, x_train=x, y_train=y, x_test=x, y_test=y,
                                                       x_val=x)


def test_npz_missing_or_corrupt_file(tiny_params, workdir):
    with pytest.raises(DataError, match="file not found"):
        prepare(tiny_params(**{"data.dataset": "npz", "data.npz.path": "none.npz"}))
    (workdir / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable .npz"):
        prepare(tiny_params(**{"data.dataset": "npz", "data.npz.path": "junk.npz"}))


def test_load_prepared_says_which_stage_to_run(workdir):
    with pytest.raises(DataError, match="python -m pipeline prepare"):
        load_prepared("mnist1d")


def test_many_small_classes_still_give_a_validation_split():
    """Rounded once over all samples, not per class: 52 classes of 2 samples give a 20 % validation
    split of 21 (rounding each class's 0.4 down gave none), and every class keeps a training sample."""
    y = np.repeat(np.arange(52), 2)
    split = stratified_split(y, 0.2, 0.0, seed=0)
    assert len(split["val"]) == 21 and len(split["test"]) == 0
    assert np.bincount(y[split["train"]], minlength=52).min() == 1
    assert np.bincount(y[split["val"]], minlength=52).max() == 1
    assert stratified_split(y, 0.2, 0.0, seed=0)["val"].tolist() == split["val"].tolist()  # fixed by the seed
    # one sample per class: nothing can be spared, and the error says why
    one = np.arange(18)
    assert len(stratified_split(one, 0.2, 0.0, seed=0)["val"]) == 0


def test_an_empty_validation_split_says_which_classes_have_one_sample(tiny_params, workdir):
    x = np.random.default_rng(0).normal(size=(18, 1, 8)).astype(np.float32)
    np.savez(workdir / "one.npz", x_train=x, y_train=np.arange(18), x_test=x, y_test=np.arange(18))
    with pytest.raises(DataError, match="val split is empty .*18 of 18 classes have only one"):
        prepare(tiny_params(**{"data.dataset": "npz", "data.npz.path": str(workdir / "one.npz")}))
