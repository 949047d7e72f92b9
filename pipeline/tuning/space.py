"""The search space from params.yaml turned into ``trial.suggest_*`` calls: every dimension of a
trial is chosen here, in one place, and validated against the same config classes as params."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from pipeline.config import Dimension, Params, Range, TrainCfg


def suggest(trial, name: str, dim: Dimension) -> Any:
    if isinstance(dim, Range):
        if dim.is_int:
            return trial.suggest_int(name, int(dim.low), int(dim.high), log=dim.log)
        return trial.suggest_float(name, float(dim.low), float(dim.high), log=dim.log)
    return trial.suggest_categorical(name, list(dim))


def _apply(base: BaseModel, overrides: dict, where: str) -> BaseModel:
    try:
        return type(base).model_validate({**base.model_dump(), **overrides})
    except ValidationError as err:
        first = err.errors()[0]
        raise ValueError(f"tune.space.{where}: trial values {overrides} are invalid: "
                         f"{'.'.join(map(str, first['loc']))}: {first['msg']}") from None


def sample(trial, params: Params, family: str, max_epochs: int) -> tuple[TrainCfg, dict]:
    """(training config, model hyperparameters) of one trial. Names are prefixed by section
    (``train.lr``, ``model.width``) so Optuna's plots and MLflow params read unambiguously."""
    space = params.tune.space
    train_over = {k: suggest(trial, f"train.{k}", d) for k, d in space.train.items()}
    model_over = {k: suggest(trial, f"model.{k}", d) for k, d in space.for_family(family).items()}
    train_over["max_epochs"] = max_epochs
    train_cfg = _apply(params.train, train_over, "train")
    model_cfg = _apply(params.models.for_family(family), model_over, family)
    return train_cfg, model_cfg.model_dump()


def _inside(value: Any, dim: Dimension) -> bool:
    if isinstance(dim, Range):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if dim.is_int and not float(value).is_integer():
            return False
        return float(dim.low) <= float(value) <= float(dim.high)
    return value in list(dim)


def baseline_point(params: Params, family: str) -> dict[str, Any]:
    """The params.yaml configuration as a trial point (``train.x`` / ``model.y``), for the
    dimensions whose baseline value lies inside the space; the other dimensions stay free."""
    space = params.tune.space
    point = {}
    for prefix, cfg, dims in (("train", params.train, space.train),
                              ("model", params.models.for_family(family), space.for_family(family))):
        for key, dim in dims.items():
            value = getattr(cfg, key)
            if _inside(value, dim):
                point[f"{prefix}.{key}"] = int(value) if isinstance(dim, Range) and dim.is_int else value
    return point


def split_params(flat: dict[str, Any]) -> tuple[dict, dict]:
    """Optuna's flat ``train.x`` / ``model.y`` params back into the two override dicts."""
    train = {k.removeprefix("train."): v for k, v in flat.items() if k.startswith("train.")}
    model = {k.removeprefix("model."): v for k, v in flat.items() if k.startswith("model.")}
    return train, model
