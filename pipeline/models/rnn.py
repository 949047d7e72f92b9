"""Recurrent classifier: GRU or LSTM over the token sequence, optionally bidirectional.

The initial states are passed explicitly, shaped (num_layers * directions, batch, hidden) for
both cells, and (h0, c0) for the LSTM. The last layer's final hidden state of each direction
feeds the classifier.
"""
from __future__ import annotations

import torch
from torch import nn

from pipeline.config import RNNCfg
from pipeline.models.tokens import ToTokens


class RNN(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int, cfg: RNNCfg):
        super().__init__()
        self.tokens = ToTokens(input_shape)
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
