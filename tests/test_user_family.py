"""A user's own model family named by import path (``models.<name>.target``): the FCN example
through every stage, and each way a target can be wrong, caught with the family and key named."""
import json

import pytest

from pipeline import cli, paths
from pipeline.compression.compress import compress_family
from pipeline.config import ParamsError, parse_params
from pipeline.data.prepare import prepare, save
from pipeline.evaluation.evaluate import evaluate_family
from pipeline.models.family import families, get_family
from pipeline.reporting.compare import Filters
from pipeline.reporting.report import load
from pipeline.sweep import scaled_hparams
from pipeline.training.train import train_family
from pipeline.tuning.tune import tune_family

from .conftest import ROOT, tiny_raw

FAST = {"evaluate.energy_rounds": 2, "evaluate.energy_min_duration_s": 0.05, "evaluate.latency_samples": 5}
FCN = {"target": "examples.fcn:fcn", "channels": 4}


@pytest.fixture
def on_path(monkeypatch):
    """The repo root importable (``examples``, ``tests``), as the working directory is under DVC."""
    monkeypatch.syspath_prepend(str(ROOT))


def _raw(family_block: dict, name: str = "fcn", **overrides) -> dict:
    raw = tiny_raw(**FAST, **overrides)
    raw["families"] = ["mlp", name]
    raw["models"][name] = family_block
    return raw


def test_the_fcn_example_runs_through_every_stage(on_path, workdir, meter):
    params = parse_params(_raw(FCN, **{"sweep.families": ["fcn"], "sweep.widths": [2],
                                       "compress.distill.student.fcn": {"channels": 2}}))
    assert "fcn" in families() and params.models.for_family("fcn").channels == 4
    assert params.tune.space.for_family("fcn") == {"channels": [32, 64, 128]}  # declared on the callable
    assert scaled_hparams(params, "fcn", 2, 1)["channels"] == 8
    prepared = prepare(params)
    save(prepared, "mnist1d")

    trained = train_family(params, "fcn", meter, prepared)
    assert trained["flops_per_sample_inference"] > 0 and trained["params"] > 0  # counted like the built-ins
    assert tune_family(params, "fcn", meter, prepared)["trials"] == 2
    for variant in (paths.BASELINE, paths.TUNED):
        assert 0 <= evaluate_family(params, "fcn", variant, meter)["test_acc"] <= 1
    m = compress_family(params, "fcn", meter=meter, prepared=prepared)
    assert set(m["variants"]) == {"quant_dynamic-int8", "quant_static-int8", "prune_global-0.5", "prune_structured-0.5",
                                  "distill-fcn_channels2", "scratch-fcn_channels2"}
    assert m["skipped"] == {}
    spec = json.loads((paths.model_dir("fcn") / "spec.json").read_text())
    assert spec["hparams"] == {"channels": 4, "kernel_sizes": [8, 5, 3], "target": "examples.fcn:fcn"}

    cmp = load(params, Filters(families=["fcn"]))
    assert {r["family"] for r in cmp.rows} == {"fcn"} and {"train", "tune", "compress"} <= {r["stage"] for r in cmp.rows}


def test_a_callable_that_declares_nothing_is_skipped_with_reasons(on_path, workdir, meter):
    params = parse_params(_raw({"target": "tests.user_models:linear", "hidden": 6}, name="lin",
                               **{"train.max_epochs": 1}))
    assert params.tune.space.for_family("lin") == {}
    with pytest.raises(ParamsError, match=r"sweep\.families\.0: family 'lin' cannot be swept"):
        parse_params(_raw({"target": "tests.user_models:linear"}, name="lin", **{"sweep.families": ["lin"]}))
    prepared = prepare(params)
    save(prepared, "mnist1d")
    assert train_family(params, "lin", meter, prepared)["params"] == 40 * 6 + 6 + 6 * 10 + 10
    m = compress_family(params, "lin", meter=meter, prepared=prepared)
    assert set(m["variants"]) == {"quant_dynamic-int8"}
    assert "declares no static int8" in m["skipped"]["quant_static-int8"]
    assert "no prunable weights" in m["skipped"]["prune_global-0.5"]
    from pipeline.tracking import client_for  # the reasons are on the trained model's MLflow run too

    client, _ = client_for(params.tracking)
    tags = client.get_run(m["source_run_id"]).data.tags
    assert "no prunable weights" in tags["compress_skipped.prune_global-0.5"]
    # Declared in params instead of on the callable: every weight matrix may be pruned.
    params = parse_params(_raw({"target": "tests.user_models:linear", "hidden": 6, "prunable": True}, name="lin",
                               **{"train.max_epochs": 1}))
    assert get_family("lin").prunable(get_family("lin").build((1, 40), 10, params.models.for_family("lin")))


BAD_TARGETS = [
    ({"target": "no_such_package.models:net"}, "models.bad.target: cannot import 'no_such_package.models'"),
    ({"target": "tests.user_models:missing"}, "models.bad.target: module 'tests.user_models' has no attribute 'missing'"),
    ({"target": "tests/user_models.py"}, "models.bad.target: 'tests/user_models.py' is not an import path"),
    ({"target": "tests.user_models:NOT_CALLABLE"}, "models.bad.target: 'tests.user_models:NOT_CALLABLE' is neither"),
    ({"target": "tests.user_models:linear", "hiden": 3}, "models.bad.hiden: not a keyword of tests.user_models:linear"),
    ({"target": "tests.user_models:linear", "hidden": "wide"}, "models.bad.hidden"),
    ({"target": "tests.user_models:needs_depth"}, "models.bad.depth: required by tests.user_models:needs_depth"),
    ({"target": "tests.user_models:takes_one"}, "must take (input_shape, num_classes, **keywords)"),
    ({"target": "tests.user_models:linear", "width_param": "nope"}, "models.bad.width_param: 'nope' is not an integer"),
]


@pytest.mark.parametrize("block, message", BAD_TARGETS, ids=[b[1].split(":")[0] + str(i) for i, b in enumerate(BAD_TARGETS)])
def test_a_bad_target_fails_at_load_naming_the_key(on_path, block, message):
    with pytest.raises(ParamsError) as err:
        parse_params(_raw(block, name="bad"))
    assert message in str(err.value)


def test_a_builtin_name_cannot_be_taken(on_path):
    raw = tiny_raw()
    raw["models"]["cnn"] = {"target": "tests.user_models:linear"}
    with pytest.raises(ParamsError, match="models.cnn.target: 'cnn' is a built-in or registered family"):
        parse_params(raw)


@pytest.mark.parametrize("target, message", [
    ("tests.user_models:returns_a_dict", "models.bad.target: tests.user_models:returns_a_dict returned dict, not a "
                                         "torch.nn.Module"),
    ("tests.user_models:wrong_classes", "returns (2, 11) for a batch of shape (2, 1, 40); expected logits of shape "
                                        "(2, 10) for 10 classes"),
    ("tests.user_models:raises", "raised RuntimeError: no GPU here"),
])
def test_a_model_that_cannot_serve_fails_before_any_run(on_path, workdir, capsys, target, message):
    """Caught when the stage builds it, before a run or output exists: exit 2, the key named."""
    import yaml

    (workdir / "params.yaml").write_text(yaml.safe_dump(_raw({"target": target}, name="bad")))
    assert cli.main(["prepare"]) == 0
    before = sorted(p.relative_to(workdir) for p in workdir.rglob("*"))
    capsys.readouterr()
    for stage in ("train", "tune"):
        assert cli.main([stage, "--family", "bad"]) == cli.EXIT_BAD_INPUT
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    assert sorted(p.relative_to(workdir) for p in workdir.rglob("*")) == before


def test_a_user_family_searches_with_several_worker_processes(on_path, workdir, meter):
    """Spawned workers get the params as data and register the family again (its Params class,
    made when params load, cannot be pickled)."""
    params = parse_params(_raw({"target": "tests.user_models:linear", "hidden": 4}, name="lin",
                               **{"tune.search.n_workers": 2, "tune.search.n_trials": 3}))
    prepared = prepare(params)
    save(prepared, "mnist1d")
    m = tune_family(params, "lin", meter, prepared)
    assert m["trials"] == 3 and m["trials_failed"] == 0


def test_a_model_class_or_a_family_class_as_the_target(on_path):
    """An nn.Module subclass is a callable like any other; a Family subclass brings its own Params
    (bounds checked) and declarations."""
    params = parse_params(_raw({"target": "tests.user_models:TinyNet", "hidden": 3}, name="tiny"))
    model = get_family("tiny").build((1, 40), 10, params.models.for_family("tiny"))
    assert type(model).__name__ == "TinyNet" and model.net[1].out_features == 3
    params = parse_params(_raw({"target": "tests.user_models:LinearFamily", "hidden": 5}, name="linfam"))
    family = get_family("linfam")
    assert params.models.for_family("linfam").hidden == 5 and family.width_param == "hidden"
    assert family.prunable(family.build((1, 40), 10, params.models.for_family("linfam")))
    with pytest.raises(ParamsError, match=r"models\.linfam\.hidden"):
        parse_params(_raw({"target": "tests.user_models:LinearFamily", "hidden": 0}, name="linfam"))
