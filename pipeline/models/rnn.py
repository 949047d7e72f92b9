"""The ``rnn`` family: a GRU or LSTM over the token sequence, optionally bidirectional.

Tokens are ``patch_size`` consecutive steps; a long series is patched more coarsely, so that the
cell runs at most ``max_tokens`` steps (a 40-step series: 40 steps; 427 steps: 62 patches of 7).

The initial states are passed explicitly, shaped (num_layers * directions, batch, hidden) for
both cells, and (h0, c0) for the LSTM. The last layer's final hidden state of each direction
feeds the classifier. Eager static int8 has no kernel for the cells (dynamic int8 quantizes
them); structured pruning removes whole hidden units, all their gate rows together. torch's FLOP
counter has no formula for the fused LSTM kernel: the profile reports that model's FLOPs as not
countable.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from pipeline.models.factory import ModelSpec, build_model
from pipeline.models.family import Family, FamilyParams, RecurrentUnits, register_family, weight_matrices
from pipeline.models.tokens import ToTokens, effective_patch


class RNNParams(FamilyParams):
    cell: Literal["gru", "lstm"] = "gru"
    hidden_size: int = Field(64, ge=1)
    num_layers: int = Field(1, ge=1)
    bidirectional: bool = False
    dropout: float = Field(0.0, ge=0, lt=1)  # between stacked layers
    # Consecutive time steps (or image rows) grouped into one step of the cell ...
    patch_size: int = Field(1, ge=1)
    # ... raised for long inputs so that the cell runs at most this many steps (0: no limit).
    max_tokens: int = Field(64, ge=0)


class RNN(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int, cfg: RNNParams):
        super().__init__()
        self.tokens = ToTokens(input_shape, effective_patch(input_shape, cfg.patch_size, cfg.max_tokens))
        cell = {"gru": nn.GRU, "lstm": nn.LSTM}[cfg.cell]
        self.is_lstm = cfg.cell == "lstm"
        self.directions = 2 if cfg.bidirectional else 1
        self.num_layers, self.hidden_size = cfg.num_layers, cfg.hidden_size
        self.rnn = cell(
            self.tokens.features,
            cfg.hidden_size,
            num_layers=cfg.num_layers,
            batch_first=True,
            bidirectional=cfg.bidirectional,
            dropout=cfg.dropout if cfg.num_layers > 1 else 0.0,
        )
        self.head = nn.Linear(cfg.hidden_size * self.directions, num_classes)

    def initial_state(self, batch: int, like: torch.Tensor):
        h0 = like.new_zeros(self.num_layers * self.directions, batch, self.hidden_size)
        return (h0, torch.zeros_like(h0)) if self.is_lstm else h0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq = self.tokens(x)
        _, state = self.rnn(seq, self.initial_state(seq.shape[0], seq))
        h_n = state[0] if self.is_lstm else state
        last = h_n.view(self.num_layers, self.directions, seq.shape[0], self.hidden_size)[-1]
        return self.head(last.transpose(0, 1).reshape(seq.shape[0], -1))


@register_family("rnn")
class RNNFamily(Family):
    Params = RNNParams
    width_param, depth_param = "hidden_size", "num_layers"
    static_int8_unsupported = ("PyTorch's eager static int8 mode has no CPU kernels for GRU/LSTM cells; "
                               "only dynamic quantization applies")

    def build(self, input_shape, num_classes, params):
        return RNN(input_shape, num_classes, params)

    def search_space(self):
        return {"hidden_size": [32, 64, 96]}

    def student_overrides(self):
        return {"hidden_size": 32}

    def prunable(self, model):
        return weight_matrices(model)

    def pruning_units(self, model):
        return [RecurrentUnits(model.rnn)]

    def compact(self, model, spec, keep):
        new_spec = ModelSpec(spec.family, spec.input_shape, spec.num_classes, {**spec.hparams, "hidden_size": len(keep[0])})
        new = build_model(new_spec)
        old_rnn, new_rnn = model.rnn, new.rnn
        hidden, dirs = old_rnn.hidden_size, 2 if old_rnn.bidirectional else 1
        gates = old_rnn.weight_ih_l0.shape[0] // hidden
        suffixes = [""] + (["_reverse"] if old_rnn.bidirectional else [])
        prev_cols = None  # the previous layer's kept outputs, both directions: this layer's inputs
        with torch.no_grad():
            for layer in range(old_rnn.num_layers):
                layer_keeps = keep[layer * dirs:(layer + 1) * dirs]
                for kept, sfx in zip(layer_keeps, suffixes, strict=True):
                    rows = torch.cat([g * hidden + kept for g in range(gates)])
                    w_ih = getattr(old_rnn, f"weight_ih_l{layer}{sfx}")[rows]
                    getattr(new_rnn, f"weight_ih_l{layer}{sfx}").copy_(w_ih if prev_cols is None else w_ih[:, prev_cols])
                    getattr(new_rnn, f"weight_hh_l{layer}{sfx}").copy_(
                        getattr(old_rnn, f"weight_hh_l{layer}{sfx}")[rows][:, kept])
                    for b in ("bias_ih", "bias_hh"):
                        if getattr(old_rnn, f"{b}_l{layer}{sfx}", None) is not None:
                            getattr(new_rnn, f"{b}_l{layer}{sfx}").copy_(getattr(old_rnn, f"{b}_l{layer}{sfx}")[rows])
                prev_cols = torch.cat([d * hidden + kk for d, kk in enumerate(layer_keeps)])
            new.head.weight.copy_(model.head.weight[:, prev_cols])
            new.head.bias.copy_(model.head.bias)
        return new, new_spec, {}
