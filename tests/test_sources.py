"""Every data source through ``prepare``: the splits it comes with are kept, labels of any type map
to class indices recorded on the card, normalisation uses the training split only, and bad data is
an error naming the file."""
import numpy as np
import pytest

from pipeline.data.prepare import prepare
from pipeline.data.source import DataError


def _ucr(tiny_params, **over):
    return tiny_params(**{"data.dataset": "ucr", **{f"data.ucr.{k}": v for k, v in over.items()}})


def _aeon_file(name, split):
    from aeon.datasets import load_from_ts_file

    from pipeline.data.ucr import _bundled

    root, _ = _bundled()
    return load_from_ts_file(str(root / name / f"{name}_{split}.ts"))


def test_ucr_keeps_the_archive_split(tiny_params):
    """GunPoint: the archive's 150 test series are the test split, unchanged but for the training
    split's normalisation; train + val are its 50 training series, val stratified."""
    p = prepare(_ucr(tiny_params, name="GunPoint"))
    card, a = p.card, p.arrays
    assert card["name"] == "GunPoint" and card["input_shape"] == [1, 150] and card["classes"] == ["1", "2"]
    assert card["num_samples"] == {"train": 42, "val": 8, "test": 150}
    assert card["class_counts"]["val"] == [4, 4]
    x_test, y_test = _aeon_file("GunPoint", "TEST")
    x_train, _ = _aeon_file("GunPoint", "TRAIN")
    mean, std = card["normalization"]["mean"][0], card["normalization"]["std"][0]
    # scaled by the training split's statistics (test_npz_given_splits_are_kept: not the test split's)
    train_all = np.concatenate([a["x_train"], a["x_val"]]) * std + mean
    np.testing.assert_allclose([a["x_train"].mean(), a["x_train"].std()], [0, 1], atol=1e-5)
    np.testing.assert_allclose(np.sort(train_all.ravel()), np.sort(x_train.ravel().astype(np.float32)), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(a["x_test"] * std + mean, x_test.astype(np.float32), rtol=1e-4, atol=1e-4)
    assert [card["classes"][i] for i in a["y_test"]] == list(y_test)


def test_ucr_multivariate_text_labels_and_unequal_length(tiny_params):
    p = prepare(_ucr(tiny_params, name="BasicMotions"))
    assert p.card["input_shape"] == [6, 100] and p.card["num_classes"] == 4
    assert p.card["classes"] == ["standing", "running", "walking", "badminton"]  # the header's order
    assert len(p.card["normalization"]["mean"]) == 6

    p = prepare(_ucr(tiny_params, name="JapaneseVowels"))
    lengths = p.card["lengths"]
    assert p.card["input_shape"] == [12, 29] and lengths["padded_to"] == 29 and lengths["min"] == 7
    x_test, _ = _aeon_file("JapaneseVowels", "TEST")
    short = int(np.argmin([s.shape[1] for s in x_test]))
    n = x_test[short].shape[1]
    assert np.all(p.arrays["x_test"][short, :, n:] == 0) and np.any(p.arrays["x_test"][short, :, :n] != 0)
    with pytest.raises(DataError, match="JapaneseVowels_TRAIN.ts: series of unequal length"):
        prepare(_ucr(tiny_params, name="JapaneseVowels", unequal_length="error"))


def test_ucr_from_a_folder_and_its_errors(tiny_params, workdir):
    from pipeline.data.ucr import _bundled

    root, _ = _bundled()
    (workdir / "arch" / "GunPoint").mkdir(parents=True)
    for split in ("TRAIN", "TEST"):
        name = f"GunPoint/GunPoint_{split}.ts"
        (workdir / "arch" / name).write_bytes((root / name).read_bytes())
    a = prepare(_ucr(tiny_params, name="GunPoint", path=str(workdir / "arch")))
    assert a.card["sha256"] == prepare(_ucr(tiny_params, name="GunPoint")).card["sha256"]
    with pytest.raises(DataError, match="'Nope': not among the datasets aeon ships"):
        prepare(_ucr(tiny_params, name="Nope"))
    with pytest.raises(DataError, match="no Coffee_TRAIN.ts and Coffee_TEST.ts or Coffee_TRAIN.tsv and Coffee_TEST.tsv"):
        prepare(_ucr(tiny_params, name="Coffee", path=str(workdir / "arch")))
    bad = workdir / "arch" / "GunPoint" / "GunPoint_TEST.ts"
    bad.write_text("@problemName GunPoint\n@univariate true\n@classLabel true 1 2\n@data\n0.1,0.2,zz:1\n")
    with pytest.raises(DataError, match="GunPoint_TEST.ts"):
        prepare(_ucr(tiny_params, name="GunPoint", path=str(workdir / "arch")))


def _write_tsv(path, x, y):
    """The UCR 2018 archive's layout: label, then values, tab-separated, NaN past a short series' end."""
    lines = ("\t".join([str(label)] + [repr(float(v)) for v in s[0]]) for s, label in zip(x, y, strict=True))
    path.write_text("".join(line + "\n" for line in lines))


def _write_arff(path, x, y, classes):
    """Weka's layout as the archives write it: one numeric attribute per step, or, with several
    channels, one relational attribute whose channels are separated by a literal \\n."""
    head = ["@relation Problem"]
    if x.shape[1] == 1:
        head += [f"@attribute att{i} numeric" for i in range(x.shape[2])]
        rows = [",".join(repr(float(v)) for v in s[0]) + f",{label}" for s, label in zip(x, y, strict=True)]
    else:
        head += ["@attribute relationalAtt relational"] + [f"@attribute att{i} numeric" for i in range(x.shape[2])]
        head += ["@end relationalAtt"]
        rows = ["'" + "\\n".join(",".join(repr(float(v)) for v in c) for c in s) + f"',{label}"
                for s, label in zip(x, y, strict=True)]
    head += ["@attribute target {" + ",".join(classes) + "}", "", "@data"]
    path.write_text("\n".join(head + rows) + "\n")


def test_ucr_tsv_and_arff_read_as_the_same_problem_in_ts(tiny_params, workdir):
    """The UCR 2018 archive's .tsv and Weka's .arff of a problem prepare to the same arrays as its
    .ts (the arff's header order of classes kept); a .tsv's short series end where its values do
    and are padded; a format asked for that is not there is an error listing what was looked for."""
    for name, fmt, write in (("GunPoint", "tsv", _write_tsv), ("GunPoint", "arff", _write_arff),
                             ("BasicMotions", "arff", _write_arff)):
        folder = workdir / fmt / name
        folder.mkdir(parents=True, exist_ok=True)
        classes = prepare(_ucr(tiny_params, name=name)).card["classes"]
        for split in ("TRAIN", "TEST"):
            x, y = _aeon_file(name, split)
            args = (classes,) if write is _write_arff else ()
            # a lone .ts beside them is not the pair the format auto-detection takes
            write(folder / f"{name}_{split}.{fmt}", x, y, *args)
        (folder / f"{name}_TEST.ts").write_text("not read")
        ts = prepare(_ucr(tiny_params, name=name)).card
        other = prepare(_ucr(tiny_params, name=name, path=str(workdir / fmt))).card
        assert other["format"] == fmt and other["sha256"] == ts["sha256"], (name, fmt)
        assert [str(c) for c in other["classes"]] == ts["classes"]

    x, y = _aeon_file("GunPoint", "TRAIN")
    x = x.astype(float)
    x[3, 0, 100:] = np.nan  # a series of 100 steps in a file of 150
    _write_tsv(workdir / "tsv" / "GunPoint" / "GunPoint_TRAIN.tsv", x, y)
    card = prepare(_ucr(tiny_params, name="GunPoint", path=str(workdir / "tsv"))).card
    assert card["lengths"]["min"] == 100 and card["lengths"]["padded_to"] == 150
    with pytest.raises(DataError, match="GunPoint_TRAIN.tsv: series of unequal length"):
        prepare(_ucr(tiny_params, name="GunPoint", path=str(workdir / "tsv"), unequal_length="error"))
    with pytest.raises(DataError, match=r"no GunPoint_TRAIN.arff and GunPoint_TEST.arff \(looked in"):
        prepare(_ucr(tiny_params, name="GunPoint", path=str(workdir / "tsv"), format="arff"))
    with pytest.raises(DataError, match="data.ucr.format='tsv': the datasets aeon ships are .ts files"):
        prepare(_ucr(tiny_params, name="GunPoint", format="tsv"))
    (workdir / "tsv" / "GunPoint" / "GunPoint_TEST.tsv").write_text("1\t0.5\tzz\n")
    with pytest.raises(DataError, match="GunPoint_TEST.tsv: not a readable .tsv file"):
        prepare(_ucr(tiny_params, name="GunPoint", path=str(workdir / "tsv")))


def test_ucr_missing_values_are_named_or_interpolated(tiny_params, workdir):
    """'?' in a .ts file: an error naming the file, series, channel and step; or, with
    ``missing: interpolate``, filled linearly along time (the first or last observed value at
    the ends), counted on the card; a channel with nothing observed is refused."""
    def ts(split, rows):
        head = ["@problemName Gap", "@missing true", "@univariate true", "@equalLength true", "@seriesLength 4",
                "@classLabel true a b", "@data"]
        (workdir / "gap" / f"Gap_{split}.ts").write_text("\n".join(head + rows) + "\n")

    (workdir / "gap").mkdir()
    train = [f"{i},{i + 1},{i + 2},{i + 3}:{'ab'[i % 2]}" for i in range(20)]
    train[0], train[3] = "?,1,?,3:a", "3,?,5,?:b"
    ts("TRAIN", train)
    ts("TEST", [f"{i},{i},{i},{i}:{'ab'[i % 2]}" for i in range(6)])
    gap = {"data.dataset": "ucr", "data.ucr.name": "Gap", "data.ucr.path": "gap", "data.normalize": "none"}
    with pytest.raises(DataError, match=r"Gap_TRAIN.ts: 4 missing value\(s\), the first in series 0, channel 0, step 0 "
                                        r".*data.ucr.missing: interpolate"):
        prepare(tiny_params(**gap))
    from pipeline.data.ucr import Ucr, UcrParams

    x, _ = Ucr().load(UcrParams(name="Gap", path="gap", missing="interpolate")).splits["train"]
    np.testing.assert_array_equal(x[0, 0], [1, 1, 2, 3])
    np.testing.assert_array_equal(x[3, 0], [3, 4, 5, 5])
    p = prepare(tiny_params(**gap, **{"data.ucr.missing": "interpolate"}))
    assert p.card["missing_values_interpolated"] == {"train": 4}
    from pipeline.reporting.data_section import data_markdown

    assert "- Missing values interpolated along time: train 4." in data_markdown(p.card)
    train[5] = "?,?,?,?:b"
    ts("TRAIN", train)
    with pytest.raises(DataError, match="series 5, channel 0 has no observed value"):
        prepare(tiny_params(**gap, **{"data.ucr.missing": "interpolate"}))


def test_table_csv_and_parquet(tiny_params, workdir):
    import pandas as pd

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"age": rng.integers(20, 70, 90), "income": rng.normal(5e4, 1e4, 90),
                          "flag": rng.integers(0, 2, 90).astype(bool), "kind": np.array(["cat", "dog", "eel"] * 30)})
    frame.to_csv(workdir / "t.csv", index=False)
    frame.to_parquet(workdir / "t.parquet")
    for f in ("t.csv", "t.parquet"):
        p = prepare(tiny_params(**{"data.dataset": "table", "data.table.path": f, "data.table.label_column": "kind"}))
        card = p.card
        assert card["input_shape"] == [1, 3] and card["features"] == ["age", "income", "flag"]
        assert card["classes"] == ["cat", "dog", "eel"] and card["normalization"]["mode"] == "feature"
        np.testing.assert_allclose(p.arrays["x_train"].mean(axis=0), 0, atol=1e-5)  # each column on its own
        np.testing.assert_allclose(p.arrays["x_train"].std(axis=0), 1, atol=1e-4)
        assert p.arrays["norm_mean"].shape == (1, 3) and p.arrays["norm_mean"][0, 1] > 1e4
    frame.assign(when=pd.Timestamp("2026-01-01")).to_parquet(workdir / "bad.parquet")
    with pytest.raises(DataError, match="bad.parquet.*column 'when' is not numeric.*encode it as numbers"):
        prepare(tiny_params(**{"data.dataset": "table", "data.table.path": "bad.parquet", "data.table.label_column": "kind"}))
    with pytest.raises(DataError, match="no label column 'label'"):
        prepare(tiny_params(**{"data.dataset": "table", "data.table.path": "t.csv"}))
    frame.iloc[:20].assign(kind="wolf").to_csv(workdir / "test.csv", index=False)
    with pytest.raises(DataError, match=r"test.csv.*\['wolf'\] do not occur in the training split"):
        prepare(tiny_params(**{"data.dataset": "table", "data.table.path": "t.csv", "data.table.label_column": "kind",
                               "data.table.test_path": "test.csv"}))


def test_table_text_columns_are_one_hot_with_the_training_files_categories(tiny_params, workdir):
    """A text column becomes one 0/1 feature per category of the training file (sorted, named
    column=value); a value only the test file has sets none and is counted; a missing text value
    is a missing value of its column; too many categories, or categorical: error, name the column."""
    import pandas as pd

    rng = np.random.default_rng(1)
    n = 60
    frame = pd.DataFrame({"size": rng.normal(size=n), "colour": rng.choice(["red", "blue", "green"], n),
                          "label": ["a", "b"] * (n // 2)})
    frame.to_csv(workdir / "train.csv", index=False)
    test = frame.iloc[:10].copy()
    test.loc[[0, 3], "colour"] = "violet"
    test.to_csv(workdir / "test.csv", index=False)
    table = {"data.dataset": "table", "data.table.path": "train.csv", "data.table.test_path": "test.csv",
             "data.normalize": "none"}
    p = prepare(tiny_params(**table))
    card = p.card
    assert card["features"] == ["size", "colour=blue", "colour=green", "colour=red"]
    assert card["one_hot"] == {"colour": ["blue", "green", "red"]} and card["input_shape"] == [1, 4]
    assert card["unseen_categories"] == {"test": {"colour": 2}}
    from pipeline.reporting.data_section import data_markdown

    text = data_markdown(card)
    assert "- Text columns one-hot encoded (a 0/1 feature per category of the training file): colour (3 categories)." in text
    assert "not among the training file's categories (no category set): colour 2." in text
    onehot = p.arrays["x_test"][:, 0, 1:]
    assert sorted(onehot.sum(axis=1).tolist()) == [0.0] * 2 + [1.0] * 8  # violet: no category
    train = np.concatenate([p.arrays["x_train"], p.arrays["x_val"]])[:, 0]
    assert set(train[:, 1:].sum(axis=1).tolist()) == {1.0}
    np.testing.assert_allclose(np.sort(train[:, 0]), np.sort(frame["size"].to_numpy()), rtol=1e-5)

    gaps = frame.copy()
    gaps.loc[5, "colour"] = None
    gaps.to_csv(workdir / "gaps.csv", index=False)
    with pytest.raises(DataError, match=r"gaps.csv.*1 missing or infinite feature value\(s\), the first in data row 5 "
                                        r".*column 'colour'"):
        prepare(tiny_params(**{"data.dataset": "table", "data.table.path": "gaps.csv"}))
    frame.assign(name=[f"id{i}" for i in range(n)]).to_csv(workdir / "ids.csv", index=False)
    with pytest.raises(DataError, match="ids.csv.*text column 'name' takes 60 distinct values, more than "
                                        r"data.table.max_categories \(32\)"):
        prepare(tiny_params(**{"data.dataset": "table", "data.table.path": "ids.csv"}))
    with pytest.raises(DataError, match="train.csv.*column 'colour' is not numeric.*data.table.categorical: onehot"):
        prepare(tiny_params(**table, **{"data.table.categorical": "error"}))


def _images(root, classes, n, size=(10, 12), mode="L"):
    from PIL import Image

    rng = np.random.default_rng(len(classes))
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            shape = size[::-1] if mode == "L" else (*size[::-1], 3)
            Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(root / c / f"{i}.png")


def test_table_missing_values_and_a_written_row_index(tiny_params, workdir):
    """A missing feature value is an error naming its row and column, or its row is dropped and
    counted (``missing: drop``); a blank-headed column (``to_csv`` with its index) is no feature."""
    import pandas as pd

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=60), "b": pd.array(rng.integers(0, 9, 60), dtype="Int64"),
                          "label": ["x", "y"] * 30})
    frame.loc[7, "a"], frame.loc[9, "b"], frame.loc[11, "a"] = np.nan, pd.NA, np.inf
    frame.to_parquet(workdir / "gaps.parquet")
    table = {"data.dataset": "table", "data.table.path": "gaps.parquet"}
    with pytest.raises(DataError, match=r"gaps.parquet.*3 missing or infinite feature value\(s\), the first in data "
                                        r"row 7 .*column 'a'.*data.table.missing: drop"):
        prepare(tiny_params(**table))
    p = prepare(tiny_params(**table, **{"data.table.missing": "drop"}))
    assert sum(p.card["num_samples"].values()) == 57 and p.card["rows_dropped_for_missing_values"] == {"all": 3}
    from pipeline.reporting.data_section import data_markdown

    assert "- Rows dropped for missing values: all 3." in data_markdown(p.card)

    frame.drop([7, 9, 11]).to_csv(workdir / "indexed.csv")  # the index written as a blank-headed first column
    p = prepare(tiny_params(**{"data.dataset": "table", "data.table.path": "indexed.csv"}))
    assert p.card["features"] == ["a", "b"] and p.card["columns_left_out"] == ["Unnamed: 0"]
    assert "- Columns left out (blank header, a written row index): Unnamed: 0." in data_markdown(p.card)
    p = prepare(tiny_params(**{"data.dataset": "table", "data.table.path": "indexed.csv",
                               "data.table.feature_columns": ["Unnamed: 0", "a"]}))
    assert p.card["features"] == ["Unnamed: 0", "a"] and "columns_left_out" not in p.card


def test_image_folder_pooled_and_given_splits(tiny_params, workdir):
    _images(workdir / "pool", ["ant", "bee"], 12)
    p = prepare(tiny_params(**{"data.dataset": "images", "data.images.path": "pool", "data.images.image_size": 8}))
    assert p.card["input_shape"] == [1, 8, 8] and p.card["classes"] == ["ant", "bee"] and p.card["mode"] == "grayscale"
    assert sum(p.card["num_samples"].values()) == 24

    _images(workdir / "given" / "train", ["a", "b", "c"], 8, mode="RGB")
    _images(workdir / "given" / "test", ["a", "b", "c"], 3, mode="RGB")
    p = prepare(tiny_params(**{"data.dataset": "images", "data.images.path": "given", "data.images.image_size": [6, 4]}))
    assert p.card["input_shape"] == [3, 6, 4] and p.card["num_samples"]["test"] == 9
    assert p.card["num_samples"]["train"] + p.card["num_samples"]["val"] == 24
    from pipeline.reporting.data_section import data_markdown

    # the folders read, relative to the project: the same card on every clone
    assert p.card["files"] == {"train": "given/train", "test": "given/test"}
    assert "- Read from: train `given/train`, test `given/test`." in data_markdown(p.card)
    (workdir / "given" / "test" / "a" / "0.png").write_bytes(b"no png")
    with pytest.raises(DataError, match=r"given/test/a/0.png: not a readable image"):
        prepare(tiny_params(**{"data.dataset": "images", "data.images.path": "given"}))
    (workdir / "empty" / "x").mkdir(parents=True)
    with pytest.raises(DataError, match="no images"):
        prepare(tiny_params(**{"data.dataset": "images", "data.images.path": "empty"}))


def test_images_deeper_than_8_bits_keep_their_range(workdir):
    """A 16-bit image is scaled by 65,535, not clipped at 255 (Pillow's own conversion to 8 bits
    would make most of its pixels white); a float image keeps its values; a folder mixing 8- and
    16-bit images of the same content reads them alike, in grayscale or RGB; a truncated file
    is named."""
    from PIL import Image

    from pipeline.data.images import Images, ImagesParams

    ramp = np.linspace(0, 1, 6 * 4, dtype=np.float64).reshape(4, 6)
    for c in ("a", "b"):
        (workdir / "deep" / c).mkdir(parents=True)
        Image.fromarray((ramp * 65535).astype(np.uint16)).save(workdir / "deep" / c / "16.png")
        Image.fromarray((ramp * 255).astype(np.uint8)).save(workdir / "deep" / c / "8.png")
        Image.fromarray(ramp.astype(np.float32)).save(workdir / "deep" / c / "f.tiff")
    assert Image.open(workdir / "deep" / "a" / "16.png").mode == "I;16"
    for mode, channels in (("grayscale", 1), ("rgb", 3), ("auto", 1)):
        loaded = Images().load(ImagesParams(path="deep", image_size=(4, 6), mode=mode, resample="nearest"))
        x, y = loaded.splits["all"]
        assert x.shape == (6, channels, 4, 6) and list(y) == ["a"] * 3 + ["b"] * 3
        for img in x:  # 16.png, 8.png, f.tiff of each class: the same ramp
            np.testing.assert_allclose(img, np.broadcast_to(ramp, img.shape), atol=1 / 255)
    (workdir / "deep" / "b" / "16.png").write_bytes((workdir / "deep" / "a" / "16.png").read_bytes()[:60])
    with pytest.raises(DataError, match=r"deep/b/16.png: not a readable image"):
        Images().load(ImagesParams(path="deep", image_size=4))


def test_npz_given_splits_are_kept(tiny_params, workdir):
    rng = np.random.default_rng(1)
    x_tr, x_te, x_va = rng.normal(size=(40, 16)), rng.normal(size=(10, 16)) + 3, rng.normal(size=(8, 16))
    y_tr, y_te, y_va = np.arange(40) % 2 + 7, np.arange(10) % 2 + 7, np.arange(8) % 2 + 7
    np.savez(workdir / "s.npz", x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te)
    p = prepare(tiny_params(**{"data.dataset": "npz", "data.npz.path": "s.npz"}))
    assert p.card["num_samples"]["test"] == 10 and p.card["classes"] == [7, 8]
    mean = np.array(p.card["normalization"]["mean"])
    assert abs(mean[0] - x_tr.mean()) < 0.2 < abs(mean[0] - np.concatenate([x_tr, x_te]).mean())
    np.testing.assert_allclose(p.arrays["x_test"][:, 0] * p.card["normalization"]["std"][0] + mean[0], x_te, rtol=1e-4)
    np.savez(workdir / "v.npz", x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te, x_val=x_va, y_val=y_va)
    p = prepare(tiny_params(**{"data.dataset": "npz", "data.npz.path": "v.npz"}))
    assert p.card["num_samples"] == {"train": 40, "val": 8, "test": 10}


def test_report_data_section_maps_indices_to_labels(tiny_params):
    from pipeline.reporting.data_section import data_markdown

    card = prepare(_ucr(tiny_params, name="BasicMotions")).card
    text = data_markdown(card)
    assert "**BasicMotions** (source `ucr`)" in text and "train 34, val 6, test 40" in text  # 15 % of 40
    assert "- Read from (ts): train `" in text and "BasicMotions_TEST.ts`." in text
    assert "| 0 | standing | 9 | 1 | 10 |" in text and "| 3 | badminton | 8 | 2 | 10 |" in text
    assert "training split only" in text and card["sha256"][:16] in text
