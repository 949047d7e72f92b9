"""Bad params and bad data: one clear message naming the key or file, exit 2, nothing written and
no MLflow run opened. Each case runs the real CLI entry point (in-process, so the 30-odd cases
take seconds) on the stage that would read the bad input."""
import json

import numpy as np
import pytest
import yaml

from pipeline import cli

from .conftest import tiny_raw

GOOD = tiny_raw()


def params_text(**overrides) -> str:
    return yaml.safe_dump(tiny_raw(**overrides))


def npz(tmp, name="data.npz", **arrays):
    path = tmp / name
    np.savez(path, **arrays)
    return path


def with_npz(path, layout="auto") -> str:
    return params_text(**{"data.dataset": "npz", "data.npz.path": str(path), "data.npz.layout": layout})


X = np.random.default_rng(0).normal(size=(60, 20)).astype(np.float32)
Y = np.arange(60) % 3

# (id, params.yaml text or a function of the work dir returning it, argv, expected words in the error)
CASES = [
    ("unknown-family", params_text(families=["mlp", "resnet"]), ["prepare"], "families"),
    ("unknown-dataset", params_text(**{"data.dataset": "cifar"}), ["prepare"], "data.dataset"),
    ("misspelt-key", params_text() + "trian: {lr: 0.1}\n", ["prepare"], "trian: unknown key"),
    ("misspelt-nested-key", params_text(**{"train.learning_rate": 0.1}), ["train", "--family", "mlp"], "train.learning_rate"),
    ("wrong-type-batch", params_text(**{"train.batch_size": "big"}), ["train", "--family", "mlp"], "train.batch_size"),
    ("wrong-type-seed", params_text(**{"base.seed": [1, 2]}), ["prepare"], "base.seed"),
    ("negative-lr", params_text(**{"train.lr": -0.1}), ["train", "--family", "mlp"], "train.lr"),
    ("zero-lr", params_text(**{"train.lr": 0}), ["train", "--family", "mlp"], "train.lr"),
    # alone, it would wait for the other machine (30 min, deaf to Ctrl-C)
    ("nodes-without-a-cluster", params_text(**{"train.num_nodes": 2}), ["train", "--family", "mlp"],
     "train.num_nodes: 2 machines asked for, but this command was not started as one of them"),
    ("zero-batch", params_text(**{"train.batch_size": 0}), ["train", "--family", "mlp"], "train.batch_size"),
    ("zero-epochs", params_text(**{"train.max_epochs": 0}), ["train", "--family", "mlp"], "train.max_epochs"),
    ("negative-epochs", params_text(**{"train.max_epochs": -3}), ["train", "--family", "mlp"], "train.max_epochs"),
    ("zero-trial-epochs", params_text(**{"tune.search.max_epochs": 0}), ["tune", "--family", "mlp"], "tune.search.max_epochs"),
    ("unknown-family-flag", params_text(), ["train", "--family", "resnet"], "unknown family 'resnet'"),
    ("unknown-optimizer", params_text(**{"train.optimizer": "lion"}), ["train", "--family", "mlp"], "train.optimizer"),
    ("unknown-optimizer-in-space", params_text(**{"tune.space.train": {"optimizer": ["adam", "lion"]}}),
     ["tune", "--family", "mlp"], "tune.space.train"),
    ("empty-space-list", params_text(**{"tune.space.mlp": {"width": []}}), ["tune", "--family", "mlp"], "tune.space.mlp.width"),
    ("inverted-bounds", params_text(**{"tune.space.train": {"lr": {"low": 0.1, "high": 0.001, "log": True}}}),
     ["tune", "--family", "mlp"], "tune.space.train.lr"),
    ("unknown-space-key", params_text(**{"tune.space.cnn": {"colour": [1, 2]}}), ["tune", "--family", "cnn"], "cnn.colour"),
    ("zero-energy-budget", params_text(**{"tune.search.energy_budget_kwh": 0}), ["tune", "--family", "mlp"],
     "tune.search.energy_budget_kwh"),
    ("negative-energy-budget", params_text(**{"tune.search.energy_budget_kwh": -1}), ["tune", "--family", "mlp"],
     "tune.search.energy_budget_kwh"),
    ("unknown-objective", params_text(**{"tune.search.objective": "speed"}), ["tune", "--family", "mlp"],
     "tune.search.objective"),
    ("zero-trials", params_text(**{"tune.search.n_trials": 0}), ["tune", "--family", "mlp"], "tune.search.n_trials"),
    ("fractions-sum-to-one", params_text(**{"data.val_fraction": 0.5, "data.test_fraction": 0.5}), ["prepare"], "data"),
    ("zero-depth-model", params_text(**{"models.cnn.depth": 0}), ["train", "--family", "cnn"], "models.cnn.depth"),
    ("negative-inference-threads", params_text(**{"evaluate.num_threads": -1}), ["evaluate", "--family", "mlp"],
     "evaluate.num_threads"),
    ("zero-energy-rounds", params_text(**{"evaluate.energy_rounds": 0}), ["evaluate", "--family", "mlp"],
     "evaluate.energy_rounds"),
    ("yaml-syntax", "train: [1, 2\n", ["prepare"], "YAML syntax error at line"),
    ("yaml-tab-indent", "train:\n\tlr: 0.1\n", ["prepare"], "YAML syntax error at line"),
    ("top-level-list", "- train\n- lr\n", ["prepare"], "top level must be a mapping"),
    ("npz-without-path", params_text(**{"data.dataset": "npz"}), ["prepare"], "data.npz.path"),
    ("npz-missing", lambda d: with_npz(d / "nowhere.npz"), ["prepare"], "nowhere.npz"),
    ("npz-unreadable", lambda d: ((d / "junk.npz").write_bytes(b"not a zip file"), with_npz(d / "junk.npz"))[1],
     ["prepare"], "not a readable .npz"),
    ("npz-missing-array", lambda d: with_npz(npz(d, x=X)), ["prepare"], "expected arrays x and y, or x_train"),
    ("npz-length-mismatch", lambda d: with_npz(npz(d, x=X, y=Y[:50])), ["prepare"], "60 samples but 50 labels"),
    ("npz-y-2d", lambda d: with_npz(npz(d, x=X, y=Y.reshape(30, 2))), ["prepare"], "labels must be a 1-D array"),
    ("npz-x-1d", lambda d: with_npz(npz(d, x=X[:, 0], y=Y)), ["prepare"], "x"),
    ("npz-image-layout-of-sequences", lambda d: with_npz(npz(d, x=X, y=Y), layout="image"), ["prepare"], "layout"),
    ("npz-test-label-unknown-to-train", lambda d: with_npz(npz(d, x_train=X, y_train=Y, x_test=X[:6], y_test=Y[:6] + 5)),
     ["prepare"], "do not occur in the training split"),
    ("npz-fractional-label", lambda d: with_npz(npz(d, x=X, y=Y + 0.5)), ["prepare"], "labels must be integers or text"),
    ("npz-given-splits-differ-in-shape", lambda d: with_npz(npz(d, x_train=X, y_train=Y, x_test=X[:6, :10], y_test=Y[:6])),
     ["prepare"], "differ in shape"),
    ("npz-nan", lambda d: with_npz(npz(d, x=np.where(np.arange(20) == 3, np.nan, X), y=Y)), ["prepare"], "NaN or infinite"),
    ("npz-inf", lambda d: with_npz(npz(d, x=np.where(np.arange(20) == 5, np.inf, X), y=Y)), ["prepare"], "NaN or infinite"),
    ("npz-empty", lambda d: with_npz(npz(d, x=X[:0], y=Y[:0])), ["prepare"], "empty"),
    ("npz-empty-split", lambda d: with_npz(npz(d, x=X[:3], y=Y[:3])), ["prepare"], "split"),
    ("npz-one-class", lambda d: with_npz(npz(d, x=X, y=np.zeros(60, dtype=int))), ["prepare"], "class"),
    ("missing-params-file", None, ["--params", "nope.yaml", "prepare"], "nope.yaml: file not found"),
    ("missing-profile-file", params_text(), ["--profile", "big.yaml", "prepare"], "big.yaml: file not found"),
]


@pytest.mark.parametrize("name, params, argv, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_a_clear_error_that_writes_nothing(workdir, capsys, name, params, argv, expected):
    if params is not None:
        text = params(workdir) if callable(params) else params
        (workdir / "params.yaml").write_text(text)
    before = sorted(p.relative_to(workdir) for p in workdir.rglob("*"))
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == cli.EXIT_BAD_INPUT, err
    assert expected in err and err.startswith("error: ") and "Traceback" not in err
    assert len(err.strip().splitlines()) <= 3, err  # one message, not a dump
    after = sorted(p.relative_to(workdir) for p in workdir.rglob("*"))
    assert after == before  # no output, no MLflow store, no study, no half-written file


BAD_COMMAND_LINES = [
    (["evaluate", "--family", "mlp", "--variant", "pruned"], "invalid choice: 'pruned'"),
    (["fly"], "invalid choice: 'fly'"),
]


def test_a_search_worker_without_its_file_says_what_the_file_is(workdir, capsys):
    """``tune-worker`` is started by ``tune``; run by hand on a missing or foreign file, it says
    what it wanted, exit 2, nothing written."""
    (workdir / "other.json").write_text('{"params": {}}')
    for job in ("missing.json", "other.json"):
        assert cli.main(["tune-worker", job, "--worker", "1"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {job}: not a search worker file") and "tune.search.n_workers" in err, err
    assert sorted(p.name for p in workdir.iterdir()) == ["other.json"]


@pytest.mark.parametrize("argv, expected", BAD_COMMAND_LINES)
def test_bad_command_line_exits_2(workdir, capsys, argv, expected):
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2 and expected in capsys.readouterr().err
    assert not any(workdir.iterdir())


def test_count_of_distinct_bad_inputs(tmp_path):
    """The issue asks for at least 25 distinct bad inputs: the cases above are counted only once
    each, by what they feed the CLI (the params text, the files beside it, the command line), so a
    copied or renamed case does not pad the figure."""
    ids = [c[0] for c in CASES]
    assert len(set(ids)) == len(ids), sorted({i for i in ids if ids.count(i) > 1})
    inputs = {}
    for name, params, argv, _ in CASES:
        d = tmp_path / name
        d.mkdir()
        text = params(d) if callable(params) else params
        text = None if text is None else text.replace(str(d), "<dir>")
        files = tuple(sorted((f.name, _content(f)) for f in d.iterdir()))
        inputs.setdefault((text, tuple(argv), files), []).append(name)
    same = [names for names in inputs.values() if len(names) > 1]
    assert not same, f"cases feeding the CLI the same input: {same}"
    command_lines = {tuple(argv) for argv, _ in BAD_COMMAND_LINES}
    assert len(command_lines) == len(BAD_COMMAND_LINES)
    assert len(inputs) + len(command_lines) >= 25


def _content(path) -> str:
    """A file's content as the CLI reads it: an .npz by its arrays (its zip entries carry the time
    they were written), anything else by its bytes."""
    import hashlib

    h = hashlib.sha256()
    try:
        with np.load(path, allow_pickle=False) as f:
            for k in sorted(f.files):
                h.update(k.encode() + str(f[k].dtype).encode() + str(f[k].shape).encode() + f[k].tobytes())
    except Exception:
        h = hashlib.sha256(path.read_bytes())
    return h.hexdigest()


def _damage(path, how):
    if how == "truncate":
        path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
    elif how == "drop-key":
        d = json.loads(path.read_text())
        d.pop("input_shape")
        path.write_text(json.dumps(d))
    elif how == "wider":  # a spec that no longer matches the weights beside it
        d = json.loads(path.read_text())
        d["hparams"]["width"] *= 2
        path.write_text(json.dumps(d))


DAMAGED = [
    ("prepared-file", "data/prepared/mnist1d.npz", "truncate", ["train", "--family", "mlp"], "not a readable prepared file"),
    ("data-card", "data/prepared/mnist1d.card.json", "truncate", ["train", "--family", "mlp"], "not a readable data card"),
    ("weights", "models/mlp/baseline/model.pt", "truncate", ["evaluate", "--family", "mlp"], "not readable weights"),
    ("spec-key", "models/mlp/baseline/spec.json", "drop-key", ["evaluate", "--family", "mlp"], "KeyError: 'input_shape'"),
    ("spec-weights", "models/mlp/baseline/spec.json", "wider", ["evaluate", "--family", "mlp"],
     "model.pt: its weights do not fit the model spec.json"),
    ("run-record", "models/mlp/baseline/run.json", "truncate", ["evaluate", "--family", "mlp"],
     "run.json: not a readable run record"),
]


@pytest.mark.parametrize("name, file, how, argv, expected", DAMAGED, ids=[c[0] for c in DAMAGED])
def test_a_damaged_file_of_an_earlier_stage_is_named_with_how_to_remake_it(workdir, capsys, name, file, how, argv,
                                                                             expected):
    """Files the pipeline wrote, damaged since (a disk filled, a copy cut short, a hand edit): one
    line naming the file and how to write it again, exit 2, no traceback and no MLflow run."""
    from pipeline import paths
    from pipeline.data.prepare import load_prepared
    from pipeline.models.factory import ModelSpec, build_model
    from pipeline.models.saved import save_model

    (workdir / "params.yaml").write_text(params_text())
    assert cli.main(["prepare"]) == 0
    card = load_prepared("mnist1d", arrays=False).card
    out = paths.model_dir("mlp")
    save_model(out, build_model(ModelSpec("mlp", tuple(card["input_shape"]), card["num_classes"], {"width": 16})),
               ModelSpec("mlp", tuple(card["input_shape"]), card["num_classes"], {"width": 16}))
    (out / "run.json").write_text(json.dumps({"family": "mlp", "variant": "baseline"}))
    _damage(workdir / file, how)
    capsys.readouterr()
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == cli.EXIT_BAD_INPUT, err
    assert err.startswith("error: models/" if "models/" in file else f"error: {file}: ")
    assert expected in err and "dvc repro" in err and "Traceback" not in err
    assert not (workdir / "mlruns").exists()  # read before any run opens
