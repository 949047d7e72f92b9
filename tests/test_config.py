import textwrap

import pytest
import yaml
from pydantic import BaseModel, RootModel

from pipeline.config import Params, ParamsError, load_params, parse_params
from pipeline.models.family import families

from .conftest import ROOT, tiny_raw


def test_project_params_file_is_valid():
    p = load_params(ROOT / "params.yaml")
    assert set(p.families) == set(families())
    assert p.data.dataset == "mnist1d"


def _typed_keys(node, path=()):
    """Every key path of the typed config: the fields of each section, and each family's entry of
    a per-family block with the fields of its params."""
    if isinstance(node, RootModel):
        items = node.root.items()
    elif isinstance(node, BaseModel):
        items = ((k, getattr(node, k)) for k in type(node).model_fields)
    else:
        return
    for key, value in items:
        yield (*path, key)
        yield from _typed_keys(value, (*path, key))


def _written(raw: dict, path: tuple) -> bool:
    node = raw
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return True


def test_params_yaml_ships_the_typed_defaults():
    """One source of defaults: every value params.yaml gives is the typed default, and it writes
    every key, so a key deleted from it falls back to the value it documents."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert parse_params(raw).model_dump() == Params().model_dump()
    missing = [".".join(k) for k in _typed_keys(Params()) if not _written(raw, k)]
    assert not missing, f"typed config keys that params.yaml does not write: {missing}"


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("train.lr", -0.1, "train.lr"),
        ("train.lr", 0, "train.lr"),
        ("train.batch_size", 0, "train.batch_size"),
        ("train.max_epochs", -3, "train.max_epochs"),
        ("train.lr", "fast", "train.lr"),
        ("train.optimizer", "adagradd", "train.optimizer"),
        ("train.optimizer", {"target": "torch.optim:RMSprop", "alpah": 0.9}, "train.optimizer.alpah"),
        ("train.optimizer", {"target": "torch.optim:Lion"}, "train.optimizer.target"),
        ("train.optimizer", {"target": "collections:OrderedDict"}, "train.optimizer.target"),
        ("train.scheduler", {"target": "torch.optim.lr_scheduler:StepLR"}, "train.scheduler.step_size"),
        ("train.scheduler", {"target": "torch.optim.lr_scheduler:CosineAnnealingLR", "T_max": 3, "eta": 0},
         "train.scheduler.eta"),
        ("data.dataset", "imagenet", "data.dataset"),
        ("models.transformer.num_heads", 3, "models.transformer"),
        ("models.rnn.cell", "lstmm", "models.rnn.cell"),
        ("data.val_fraction", 1.5, "data.val_fraction"),
        ("families", ["mlp", "resnet"], "families.1"),
        ("families", [], "families"),
        ("train.lrr", 0.1, "train.lrr"),
    ],
)
def test_bad_params_name_the_key(key, value, expected):
    with pytest.raises(ParamsError) as exc:
        parse_params(tiny_raw(**{key: value}))
    assert expected in str(exc.value)


def test_misspelt_key_is_called_unknown():
    with pytest.raises(ParamsError, match=r"train\.lrr: unknown key"):
        parse_params(tiny_raw(**{"train.lrr": 0.1}))


def test_yaml_syntax_error_gives_line(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text(textwrap.dedent("""\
        train:
          lr: 0.1
         batch_size: [1, 2
        """))
    with pytest.raises(ParamsError, match=r"YAML syntax error at line \d+"):
        load_params(f)


def test_missing_params_file(tmp_path):
    with pytest.raises(ParamsError, match="file not found"):
        load_params(tmp_path / "nope.yaml")


def test_npz_dataset_needs_a_path():
    with pytest.raises(ParamsError, match="data.npz.path"):
        parse_params(tiny_raw(**{"data.dataset": "npz"}))


def test_profile_merges_on_top_and_names_its_bad_keys(tmp_path):
    profile = tmp_path / "large.yaml"
    profile.write_text("tune:\n  search: {n_trials: 40}\n  space:\n    train: {optimizer: [sgd, adam]}\n")
    params = load_params(ROOT / "params.yaml", (profile,))
    assert params.tune.search.n_trials == 40 and params.tune.space.train["optimizer"] == ["sgd", "adam"]
    base = load_params(ROOT / "params.yaml")
    assert params.tune.search.max_epochs == base.tune.search.max_epochs  # untouched keys kept
    assert params.tune.space.train["lr"] == base.tune.space.train["lr"]
    profile.write_text("tune:\n  search: {n_trials: 0}\n")
    with pytest.raises(ParamsError, match=r"tune\.search\.n_trials") as err:
        load_params(ROOT / "params.yaml", (profile,))
    assert "large.yaml" in str(err.value)
    profile.write_text("- not a mapping\n")
    with pytest.raises(ParamsError, match="must be a mapping"):
        load_params(ROOT / "params.yaml", (profile,))


def test_project_search_profile_is_valid():
    params = load_params(ROOT / "params.yaml", (ROOT / "profiles" / "search-large.yaml",))
    assert "sgd" in params.tune.space.train["optimizer"] and params.tune.search.n_trials >= 20


def test_baseline_point_keeps_only_values_inside_the_space():
    from pipeline.tuning.space import baseline_point

    raw = tiny_raw()
    raw["tune"] = {"space": {"train": {"lr": {"low": 0.01, "high": 0.1, "log": True}, "batch_size": [32, 64]},
                             "mlp": {"width": [16, 32], "depth": {"low": 1, "high": 3}}}}
    point = baseline_point(parse_params(raw), "mlp")
    # lr 0.003 lies outside [0.01, 0.1]: left to the sampler; the others are the params.yaml values.
    assert point == {"train.batch_size": 64, "model.width": 32, "model.depth": 1}
