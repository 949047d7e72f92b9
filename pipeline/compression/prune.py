"""Magnitude pruning with ``torch.nn.utils.prune``, made permanent.

- ``global`` (unstructured): the ``sparsity`` fraction of smallest-magnitude weights among all
  weight matrices together (Linear, Conv, GRU/LSTM, attention input projection) is zeroed. The
  tensors stay dense: on a CPU, dense kernels multiply the zeros too, so this saves neither time
  nor (uncompressed) disk space by itself; the figures show it.
- ``structured``: the ``sparsity`` fraction of each hidden layer's neurons (mlp), channels (cnn),
  hidden units (rnn, all gates of a unit together) or feed-forward neurons (transformer) with the
  smallest L1 norm is masked (``ln_structured`` / ``custom_from_mask``), with the biases and
  BatchNorm scale/shift that would otherwise keep them alive. After fine-tuning, the masks are
  made permanent and the dead units are *removed* (``compact``): a smaller dense model that is
  exactly equivalent to the masked one, and which dense kernels do run faster.

During fine-tuning the masks stay attached (forward pre-hooks), so pruned weights stay zero.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import prune

from pipeline.models.factory import ModelSpec, build_model

Pruned = list[tuple[nn.Module, str]]


def prunable_weights(model: nn.Module) -> Pruned:
    """Every weight matrix that does multiply-adds (biases and norms excluded)."""
    out: Pruned = []
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            out.append((m, "weight"))
        elif isinstance(m, nn.RNNBase):
            out += [(m, n) for n in m._flat_weights_names if n.startswith("weight")]
        elif isinstance(m, nn.MultiheadAttention) and m.in_proj_weight is not None:
            out.append((m, "in_proj_weight"))
    return out


def weight_sparsity(model: nn.Module) -> float:
    """Fraction of exactly-zero entries among the prunable weight matrices."""
    tensors = [getattr(m, n) for m, n in prunable_weights(model)]
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


def prune_global(model: nn.Module, sparsity: float) -> PruneState:
    model = copy.deepcopy(model)
    targets = prunable_weights(model)
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


def _structured_layer(module: nn.Module, sparsity: float, pruned: Pruned, extra: list[nn.Module] = ()) -> torch.Tensor:
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


def _structured_rnn(rnn: nn.RNNBase, sparsity: float, pruned: Pruned) -> list[torch.Tensor]:
    """Hidden units of every layer and direction, ranked by the L1 norm of all their gate rows.

    A unit whose input, recurrent and bias rows are all zero stays at state 0 from a zero initial
    state (GRU: h' = z*h with n = 0; LSTM: c' = f*c, h = o*tanh(c)), so removing it is exact."""
    hidden = rnn.hidden_size
    gates = rnn.weight_ih_l0.shape[0] // hidden
    keeps = []
    for layer in range(rnn.num_layers):
        for sfx in ([""] + (["_reverse"] if rnn.bidirectional else [])):
            w_ih, w_hh = getattr(rnn, f"weight_ih_l{layer}{sfx}"), getattr(rnn, f"weight_hh_l{layer}{sfx}")
            norms = (w_ih.abs().sum(1) + w_hh.abs().sum(1)).view(gates, hidden).sum(0)
            k = hidden - _n_prune(hidden, sparsity)
            keep = torch.sort(torch.topk(norms, k).indices).values
            rows = torch.cat([g * hidden + keep for g in range(gates)])
            for name in (f"weight_ih_l{layer}{sfx}", f"weight_hh_l{layer}{sfx}", f"bias_ih_l{layer}{sfx}",
                         f"bias_hh_l{layer}{sfx}"):
                t = getattr(rnn, name, None)
                if t is None:
                    continue
                mask = _rows_mask(t, rows) if t.dim() == 2 else _vector_mask(t.shape[0], rows, t)
                prune.custom_from_mask(rnn, name, mask)
                pruned.append((rnn, name))
            keeps.append(keep)
    return keeps


def prune_structured(model: nn.Module, family: str, sparsity: float) -> PruneState:
    model = copy.deepcopy(model)
    pruned: Pruned = []
    keep: list[torch.Tensor] = []
    if family == "mlp":
        linears = [m for m in model.net if isinstance(m, nn.Linear)][:-1]  # the classifier keeps its classes
        keep = [_structured_layer(lin, sparsity, pruned) for lin in linears]
    elif family == "cnn":
        layers = list(model.features)
        for i, layer in enumerate(layers):
            if isinstance(layer, (nn.Conv1d, nn.Conv2d)):
                bn = [layers[i + 1]] if i + 1 < len(layers) and isinstance(layers[i + 1], nn.modules.batchnorm._BatchNorm) else []
                keep.append(_structured_layer(layer, sparsity, pruned, bn))
    elif family == "rnn":
        keep = _structured_rnn(model.rnn, sparsity, pruned)
    elif family == "transformer":
        keep = [_structured_layer(layer.linear1, sparsity, pruned) for layer in model.encoder.layers]
    else:
        raise ValueError(f"structured pruning: unknown family {family!r}")
    return PruneState(model, pruned, "structured", keep)


def make_permanent(state: PruneState) -> nn.Module:
    """Fold the masks into the weights and drop the pruning hooks (``prune.remove``)."""
    for handle in state.relays:
        handle.remove()
    state.relays = []
    for module, name in state.pruned:
        if prune.is_pruned(module) and hasattr(module, f"{name}_mask"):
            prune.remove(module, name)
    return state.model


def _copy(dst: torch.Tensor, src: torch.Tensor) -> None:
    with torch.no_grad():
        dst.copy_(src)


def compact(state: PruneState, spec: ModelSpec) -> tuple[nn.Module, ModelSpec, dict]:
    """Remove the units a structured pruning zeroed: a smaller dense model computing the same
    function. Returns (model, its spec, extra recipe entries needed to rebuild it)."""
    model, keep, family = state.model, state.keep, spec.family
    k = len(keep[0])
    extra: dict = {}
    if family == "mlp":
        new_spec = ModelSpec(family, spec.input_shape, spec.num_classes, {**spec.hparams, "width": k})
        new = build_model(new_spec)
        old_l = [m for m in model.net if isinstance(m, nn.Linear)]
        new_l = [m for m in new.net if isinstance(m, nn.Linear)]
        prev = None
        for i, (o, n) in enumerate(zip(old_l, new_l)):
            w = o.weight if prev is None else o.weight[:, prev]
            rows = keep[i] if i < len(keep) else slice(None)
            _copy(n.weight, w[rows])
            _copy(n.bias, o.bias[rows])
            prev = keep[i] if i < len(keep) else None
    elif family == "cnn":
        new_spec = ModelSpec(family, spec.input_shape, spec.num_classes, {**spec.hparams, "channels": k})
        new = build_model(new_spec)
        old_layers, new_layers = list(model.features), list(new.features)
        prev, ci = None, 0
        for o, n in zip(old_layers, new_layers):
            if isinstance(o, (nn.Conv1d, nn.Conv2d)):
                kept = keep[ci]
                w = o.weight[kept] if prev is None else o.weight[kept][:, prev]
                _copy(n.weight, w)
                _copy(n.bias, o.bias[kept])
                prev, ci = kept, ci + 1
            elif isinstance(o, nn.modules.batchnorm._BatchNorm):
                for name in ("weight", "bias", "running_mean", "running_var"):
                    _copy(getattr(n, name), getattr(o, name)[prev])
                _copy(n.num_batches_tracked, o.num_batches_tracked)
        head_o, head_n = model.head[-1], new.head[-1]
        c_old = old_layers[[i for i, l in enumerate(old_layers) if isinstance(l, (nn.Conv1d, nn.Conv2d))][-1]].out_channels
        w = head_o.weight.view(head_o.out_features, c_old, -1)[:, prev].reshape(head_o.out_features, -1)
        _copy(head_n.weight, w)
        _copy(head_n.bias, head_o.bias)
    elif family == "rnn":
        new_spec = ModelSpec(family, spec.input_shape, spec.num_classes, {**spec.hparams, "hidden_size": k})
        new = build_model(new_spec)
        o_rnn, n_rnn = model.rnn, new.rnn
        hidden, dirs = o_rnn.hidden_size, 2 if o_rnn.bidirectional else 1
        gates = o_rnn.weight_ih_l0.shape[0] // hidden
        sfxs = [""] + (["_reverse"] if o_rnn.bidirectional else [])
        prev_cols = None
        for layer in range(o_rnn.num_layers):
            layer_keeps = keep[layer * dirs:(layer + 1) * dirs]
            for d, sfx in enumerate(sfxs):
                kept = layer_keeps[d]
                rows = torch.cat([g * hidden + kept for g in range(gates)])
                w_ih = getattr(o_rnn, f"weight_ih_l{layer}{sfx}")[rows]
                if prev_cols is not None:
                    w_ih = w_ih[:, prev_cols]
                _copy(getattr(n_rnn, f"weight_ih_l{layer}{sfx}"), w_ih)
                _copy(getattr(n_rnn, f"weight_hh_l{layer}{sfx}"), getattr(o_rnn, f"weight_hh_l{layer}{sfx}")[rows][:, kept])
                for b in ("bias_ih", "bias_hh"):
                    if getattr(o_rnn, f"{b}_l{layer}{sfx}", None) is not None:
                        _copy(getattr(n_rnn, f"{b}_l{layer}{sfx}"), getattr(o_rnn, f"{b}_l{layer}{sfx}")[rows])
            prev_cols = torch.cat([d * hidden + kk for d, kk in enumerate(layer_keeps)])
        _copy(new.head.weight, model.head.weight[:, prev_cols])
        _copy(new.head.bias, model.head.bias)
    elif family == "transformer":
        new_spec = spec
        new = copy.deepcopy(model)
        resize_ffn(new, k)
        for o, n, kept in zip(model.encoder.layers, new.encoder.layers, keep):
            _copy(n.linear1.weight, o.linear1.weight[kept])
            _copy(n.linear1.bias, o.linear1.bias[kept])
            _copy(n.linear2.weight, o.linear2.weight[:, kept])
            _copy(n.linear2.bias, o.linear2.bias)
        extra["ffn_width"] = k
    else:
        raise ValueError(f"structured pruning: unknown family {family!r}")
    return new.eval(), new_spec, extra


def resize_ffn(model: nn.Module, width: int) -> None:
    """Give every Transformer encoder layer a feed-forward block of ``width`` neurons."""
    for layer in model.encoder.layers:
        d = layer.linear1.in_features
        layer.linear1 = nn.Linear(d, width)
        layer.linear2 = nn.Linear(width, d)
