"""Model families named in params.yaml by import path: a user's own model, no code in this package.

``models.<name>: {target: "package.module:callable", ...keyword arguments}`` registers the family
``<name>`` when params load. ``target`` names either

- a **callable** ``fn(input_shape, num_classes, **keywords) -> torch.nn.Module``: ``input_shape``
  is one sample's shape, channels first (``(channels, length)`` for series, ``(channels, height,
  width)`` for images, ``(1, features)`` for tables), ``num_classes`` the number of classes; the
  module maps a float batch ``(batch, *input_shape)`` to logits ``(batch, num_classes)``. The other
  keys of the block are its keyword arguments: their defaults are the callable's own, their
  types those of the values (a keyword the callable does not take is an error naming it); or
- a subclass of ``pipeline.models.family.Family``: the block's other keys are its ``Params``.

What a callable may declare beyond its model, as attributes of the callable (or, where noted, as
keys of the block), each what the ``Family`` method of the same name means:

- ``search_space``: the default ``tune.space.<name>`` (a dict, or a function returning one);
- ``width_param`` / ``depth_param`` (also block keys): the integer keywords the size sweep
  multiplies; a family without them is not swept;
- ``student_overrides``: keywords of a distilled student (a dict);
- ``prunable`` (also a block key): ``true`` lets global pruning zero every weight matrix (Linear,
  Conv, GRU/LSTM, attention), or a function ``model -> [(module, parameter name), ...]``;
- ``pruning_units``, ``compact``, ``fusion_groups``: functions as in ``Family``; ``static_int8 =
  True`` where every layer has an eager int8 CPU kernel (with ``fusion_groups`` to fuse).

What is not declared, the stage that needs it skips with the reason (report and MLflow).
"""
from __future__ import annotations

import inspect
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, create_model

from pipeline.errors import FamilyError
from pipeline.imports import resolve
from pipeline.models.family import Family, FamilyParams, add_family, check_family_name, find_family, weight_matrices

# Keys of a ``models.<name>`` block that are declarations, not keyword arguments of the target.
DECLARATIONS = ("target", "width_param", "depth_param", "prunable")


def register_from_params(models: Any) -> None:
    """Register a family for every ``models.<name>`` block with a ``target`` (again on every load:
    the block may have changed). Raises FamilyError naming ``models.<name>.<key>``."""
    if not isinstance(models, dict):
        return
    for name, block in models.items():
        if not (isinstance(block, dict) and "target" in block):
            continue
        key = f"models.{name}"
        try:
            check_family_name(name)
        except ValueError as err:
            raise FamilyError(f"{key}: {err}") from None
        existing = find_family(name)
        if existing is not None and not getattr(existing, "from_params", False):
            raise FamilyError(f"{key}.target: {name!r} is a built-in or registered family; give your family "
                              f"another name")
        add_family(name, family_from_block(name, block), replace=True)


def family_from_block(name: str, block: dict) -> Family:
    key = f"models.{name}"
    target = block["target"]
    try:
        obj = resolve(target, f"{key}.target")
    except ValueError as err:
        raise FamilyError(str(err)) from None
    if isinstance(obj, type) and issubclass(obj, Family):
        return _family_class(name, target, obj)()
    if not callable(obj):  # a function, or a class such as an nn.Module subclass taking (input_shape, num_classes)
        raise FamilyError(f"{key}.target: {target!r} is neither a callable returning a torch.nn.Module nor a "
                          f"Family subclass (got {type(obj).__name__})")
    return CallableFamily(name, target, obj, block)


def _family_class(name: str, target: str, cls: type[Family]) -> type[Family]:
    """``cls`` whose Params also take the block's ``target`` key."""
    params = create_model(f"{cls.Params.__name__}WithTarget", __base__=cls.Params,
                          target=(Literal[target], Field(target)))  # type: ignore[valid-type]
    return type(cls.__name__, (cls,), {"Params": params, "from_params": True, "__module__": cls.__module__})


def _field_type(value: Any) -> Any:
    """The type a keyword's values must have: that of its default (ints where the default is one)."""
    if isinstance(value, bool):
        return bool
    if isinstance(value, int):
        return int
    if isinstance(value, float):
        return float
    if isinstance(value, str):
        return str
    if isinstance(value, (list, tuple)):
        return list[Any]
    return Any


class CallableFamily(Family):
    """A family whose model comes from a user's callable; what it declares comes from the
    callable's attributes and the block's declaration keys."""

    from_params = True

    def __init__(self, name: str, target: str, fn: Any, block: dict):
        self.key, self.target, self.fn = f"models.{name}", target, fn
        given = {k: v for k, v in block.items() if k not in DECLARATIONS}
        self.Params = self._params_model(name, given, {k: block[k] for k in DECLARATIONS if k in block})
        self.width_param = self._declared("width_param", block)
        self.depth_param = self._declared("depth_param", block)
        fields = self.Params.model_fields
        for attr in ("width_param", "depth_param"):
            p = getattr(self, attr)
            if p is not None and (p not in fields or not isinstance(fields[p].default, int)
                                  or isinstance(fields[p].default, bool)):
                raise FamilyError(f"{self.key}.{attr}: {p!r} is not an integer keyword of {target}")
        prunable = self._declared("prunable", block)
        if not (prunable is None or isinstance(prunable, bool) or callable(prunable)):
            raise FamilyError(f"{self.key}.prunable: true, false or a function model -> [(module, name)], "
                              f"got {prunable!r}")
        self._prunable = prunable
        self.static_int8_unsupported = (None if getattr(fn, "static_int8", False) else
                                        f"{target} declares no static int8 support (static_int8 = True)")

    def _declared(self, attr: str, block: dict) -> Any:
        return block[attr] if attr in block else getattr(self.fn, attr, None)

    def _params_model(self, name: str, given: dict, declared: dict) -> type[BaseModel]:
        try:
            sig = inspect.signature(self.fn)
        except (TypeError, ValueError):
            raise FamilyError(f"{self.key}.target: {self.target} has no signature to read its keywords from") from None
        params = list(sig.parameters.values())
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        takes_var_positional = any(p.kind is p.VAR_POSITIONAL for p in params)
        if len(positional) < 2 and not takes_var_positional:
            raise FamilyError(f"{self.key}.target: {self.target} must take (input_shape, num_classes, **keywords)")
        keywords = {p.name: p for p in positional[2:]} | {p.name: p for p in params if p.kind is p.KEYWORD_ONLY}
        takes_any = any(p.kind is p.VAR_KEYWORD for p in params)
        fields: dict[str, Any] = {}
        for kw in given:
            if kw not in keywords and not takes_any:
                raise FamilyError(f"{self.key}.{kw}: not a keyword of {self.target}; it takes {sorted(keywords)}")
        for kw, p in keywords.items():
            if kw in DECLARATIONS:
                raise FamilyError(f"{self.key}.target: {self.target} has a keyword {kw!r}, a reserved key of "
                                  f"models.<family> ({', '.join(DECLARATIONS)})")
            if kw not in given and p.default is inspect.Parameter.empty:
                raise FamilyError(f"{self.key}.{kw}: required by {self.target} and not set")
            value = given.get(kw, p.default)
            value = list(value) if isinstance(value, tuple) else value  # as YAML would give it
            # The type of the callable's own default where it has one, else of the value given.
            fields[kw] = (_field_type(value if p.default is inspect.Parameter.empty else p.default), Field(value))
        for kw, value in given.items():
            fields.setdefault(kw, (_field_type(value), Field(value)))
        for kw, value in declared.items():  # accepted as given: the block is validated as a whole
            fields[kw] = (Literal[value] if isinstance(value, (str, bool)) else Any, Field(value))  # type: ignore[valid-type]
        model = create_model(f"{name.title()}Params", __base__=FamilyParams, **fields)
        try:  # the values given become the defaults: each must have its keyword's type
            model.model_validate({**given, **declared})
        except ValidationError as err:
            e = err.errors()[0]
            raise FamilyError(f"{self.key}.{'.'.join(map(str, e['loc']))}: {e['msg']} (got {e.get('input')!r})") from None
        return model

    def keywords(self, params: BaseModel) -> dict[str, Any]:
        return {k: v for k, v in params.model_dump().items() if k not in DECLARATIONS}

    def build(self, input_shape, num_classes, params):
        import torch
        from torch import nn

        shape = tuple(int(s) for s in input_shape)
        kwargs = self.keywords(params)
        try:
            model = self.fn(shape, num_classes, **kwargs)
        except Exception as err:
            raise FamilyError(f"{self.key}.target: {self.target}{shape, num_classes} with {kwargs} raised "
                              f"{type(err).__name__}: {err}") from err
        if not isinstance(model, nn.Module):
            raise FamilyError(f"{self.key}.target: {self.target} returned {type(model).__name__}, not a torch.nn.Module")
        # A probe batch in eval mode: the output must be logits of the right number of classes.
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                out = model(torch.zeros(2, *shape))
        except Exception as err:
            raise FamilyError(f"{self.key}.target: the model of {self.target} fails on a batch of shape "
                              f"{(2, *shape)}: {type(err).__name__}: {err}") from err
        finally:
            model.train(was_training)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise FamilyError(f"{self.key}.target: the model of {self.target} returns {got} for a batch of shape "
                              f"{(2, *shape)}; expected logits of shape (2, {num_classes}) for {num_classes} classes")
        return model

    def search_space(self):
        space = getattr(self.fn, "search_space", None)
        space = space() if callable(space) else space
        return dict(space or {})

    def student_overrides(self):
        return dict(getattr(self.fn, "student_overrides", None) or {})

    def prunable(self, model):
        if self._prunable is True:
            return weight_matrices(model)
        if callable(self._prunable):
            return list(self._prunable(model))
        return []

    def pruning_units(self, model):
        fn = getattr(self.fn, "pruning_units", None)
        return list(fn(model)) if fn else []

    def compact(self, model, spec, keep):
        fn = getattr(self.fn, "compact", None)
        return fn(model, spec, keep) if fn else super().compact(model, spec, keep)

    def fusion_groups(self, model):
        fn = getattr(self.fn, "fusion_groups", None)
        return list(fn(model)) if fn else []
