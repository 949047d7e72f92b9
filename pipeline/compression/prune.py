"""Magnitude pruning with ``torch.nn.utils.prune``, made permanent.

The model's family (``pipeline.models.family``) says what may be pruned; the masking is here.

- ``global`` (unstructured): the ``sparsity`` fraction of smallest-magnitude weights among the
  family's ``prunable`` weights together (for the built-ins: every Linear, Conv, GRU/LSTM and
  attention input projection matrix) is zeroed. The tensors stay dense: on a CPU, dense kernels
  multiply the zeros too, so this saves neither time nor (uncompressed) disk space by itself; the
  figures show it.
- ``structured``: the ``sparsity`` fraction of each of the family's ``pruning_units`` (a layer's
  output neurons or channels, or a GRU/LSTM's hidden units with all their gate rows) with the
  smallest L1 norm is masked (``ln_structured`` / ``custom_from_mask``), with the biases and
  BatchNorm scale/shift that would otherwise keep them alive. After fine-tuning, the masks are
  made permanent and the family's ``compact`` *removes* the dead units: a smaller dense model
  that is exactly equivalent to the masked one, and which dense kernels do run faster.

During fine-tuning the masks stay attached (forward pre-hooks), so pruned weights stay zero.
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import prune

from pipeline.models.factory import ModelSpec
from pipeline.models.family import RecurrentUnits, get_family, weight_matrices

Pruned = list[tuple[nn.Module, str]]


def weight_sparsity(model: nn.Module, select: Callable[[nn.Module], Pruned] = weight_matrices) -> float:
    """Fraction of exactly-zero entries among the weights ``select(model)`` names (default:
    every weight matrix that does multiply-adds)."""
    tensors = [getattr(m, n) for m, n in select(model)]
    total = sum(t.numel() for t in tensors)
    return float(sum((t == 0).sum().item() for t in tensors) / total) if total else 0.0


@dataclass
class PruneState:
    """A model with pruning masks attached, and what compaction needs to remove dead units."""

    model: nn.Module
    pruned: Pruned
    kind: str
    # structured: per pruned layer (in forward order), the indices of the units kept
    keep: list[torch.Tensor] = field(default_factory=list)
    # structured: units per pruned layer before pruning (the first layer's)
    units: int = 0
    # hooks that re-apply masks of weights read without calling their module (attention out_proj)
    relays: list = field(default_factory=list)


def _relay_out_proj(model: nn.Module) -> list:
    """``nn.MultiheadAttention`` reads ``out_proj.weight`` without calling ``out_proj``, so the
    pruning hook of ``out_proj`` never runs and its masked weight would be computed once, outside
    any training step. Re-apply that mask whenever the attention module runs."""

    def reapply(mha, _inputs):
        for hook in mha.out_proj._forward_pre_hooks.values():
            if isinstance(hook, prune.BasePruningMethod):
                hook(mha.out_proj, None)

    return [m.register_forward_pre_hook(reapply) for m in model.modules()
            if isinstance(m, nn.MultiheadAttention) and prune.is_pruned(m.out_proj)]


def prune_global(model: nn.Module, sparsity: float, select: Callable[[nn.Module], Pruned] = weight_matrices) -> PruneState:
    """A copy of ``model`` with the ``sparsity`` fraction of the weights ``select`` names (the
    family's ``prunable``; default: every weight matrix) masked to zero."""
    model = copy.deepcopy(model)
    targets = select(model)
    prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=float(sparsity))
    return PruneState(model, targets, "global", relays=_relay_out_proj(model))


def _n_prune(n: int, sparsity: float) -> int:
    # torch's own rounding of a fractional amount; at least one unit is always kept.
    return min(int(round(sparsity * n)), n - 1)


def _rows_mask(weight: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    mask = torch.zeros_like(weight)
    mask[keep] = 1
    return mask


def _vector_mask(n: int, keep: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    mask = torch.zeros(n, dtype=like.dtype)
    mask[keep] = 1
    return mask


def _structured_layer(module: nn.Module, sparsity: float, pruned: Pruned, extra: tuple[nn.Module, ...] = ()) -> torch.Tensor:
    """ln_structured (L1) on the output units of a Linear/Conv; masks its bias and the scale and
    shift of a following BatchNorm with the same units. Returns the kept indices."""
    n = module.weight.shape[0]
    prune.ln_structured(module, "weight", amount=_n_prune(n, sparsity), n=1, dim=0)
    unit_mask = module.weight_mask.flatten(1).amax(1)
    pruned.append((module, "weight"))
    for target in (module, *extra):
        for name in ("bias", "weight") if target is not module else ("bias",):
            if getattr(target, name, None) is not None:
                prune.custom_from_mask(target, name, unit_mask.clone())
                pruned.append((target, name))
    return torch.nonzero(unit_mask, as_tuple=True)[0]


def _structured_recurrent(cell: nn.RNNBase, sparsity: float, pruned: Pruned) -> list[torch.Tensor]:
    """Hidden units of every layer and direction, ranked by the L1 norm of all their gate rows.

    A unit whose input, recurrent and bias rows are all zero stays at state 0 from a zero initial
    state (GRU: h' = z*h with n = 0; LSTM: c' = f*c, h = o*tanh(c)), so removing it is exact."""
    hidden = cell.hidden_size
    gates = cell.weight_ih_l0.shape[0] // hidden
    keeps = []
    for layer in range(cell.num_layers):
        for sfx in ([""] + (["_reverse"] if cell.bidirectional else [])):
            w_ih, w_hh = getattr(cell, f"weight_ih_l{layer}{sfx}"), getattr(cell, f"weight_hh_l{layer}{sfx}")
            norms = (w_ih.abs().sum(1) + w_hh.abs().sum(1)).view(gates, hidden).sum(0)
            k = hidden - _n_prune(hidden, sparsity)
            keep = torch.sort(torch.topk(norms, k).indices).values
            rows = torch.cat([g * hidden + keep for g in range(gates)])
            for name in (f"weight_ih_l{layer}{sfx}", f"weight_hh_l{layer}{sfx}", f"bias_ih_l{layer}{sfx}",
                         f"bias_hh_l{layer}{sfx}"):
                t = getattr(cell, name, None)
                if t is None:
                    continue
                mask = _rows_mask(t, rows) if t.dim() == 2 else _vector_mask(t.shape[0], rows, t)
                prune.custom_from_mask(cell, name, mask)
                pruned.append((cell, name))
            keeps.append(keep)
    return keeps


def prune_structured(model: nn.Module, family: str, sparsity: float) -> PruneState:
    """A copy of ``model`` with the ``sparsity`` fraction of each of its family's pruning units
    masked (smallest L1 norm first)."""
    model = copy.deepcopy(model)
    units = get_family(family).pruning_units(model)
    if not units:
        raise ValueError(f"structured pruning: family {family!r} declares no pruning units")
    pruned: Pruned = []
    keep: list[torch.Tensor] = []
    for u in units:
        if isinstance(u, RecurrentUnits):
            keep += _structured_recurrent(u.layer, sparsity, pruned)
        else:
            keep.append(_structured_layer(u.layer, sparsity, pruned, u.followers))
    first = units[0].layer
    n_units = first.hidden_size if isinstance(units[0], RecurrentUnits) else first.weight.shape[0]
    return PruneState(model, pruned, "structured", keep, units=n_units)


def make_permanent(state: PruneState) -> nn.Module:
    """Fold the masks into the weights and drop the pruning hooks (``prune.remove``)."""
    for handle in state.relays:
        handle.remove()
    state.relays = []
    for module, name in state.pruned:
        if prune.is_pruned(module) and hasattr(module, f"{name}_mask"):
            prune.remove(module, name)
    return state.model


def compact(state: PruneState, spec: ModelSpec) -> tuple[nn.Module, ModelSpec, dict]:
    """Remove the units a structured pruning zeroed (the family's ``compact``): a smaller dense
    model computing the same function. Returns (model, its spec, extra recipe entries needed to
    rebuild it: the family's ``layout``, where it has one)."""
    model, new_spec, layout = get_family(spec.family).compact(state.model, spec, state.keep)
    return model.eval(), new_spec, ({"layout": layout} if layout else {})
