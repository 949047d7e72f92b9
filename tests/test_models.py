import pytest
import torch

from pipeline.models.cnn import CNNParams
from pipeline.models.factory import ModelSpec, build_model
from pipeline.models.mlp import MLPParams
from pipeline.models.profile import profile_model
from pipeline.models.rnn import RNNParams
from pipeline.models.transformer import TransformerParams

SHAPES = {"sequence": (1, 40), "image": (1, 8, 8), "multichannel-seq": (3, 17)}
CONFIGS = {
    "mlp": MLPParams(width=16, depth=2),
    "cnn": CNNParams(channels=8, depth=3, kernel_size=3),
    "rnn": RNNParams(hidden_size=12),
    "transformer": TransformerParams(d_model=16, num_heads=2, num_layers=1, patch_size=3),
}


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("family", CONFIGS)
def test_forward_gives_logits_and_trains(family, shape):
    torch.manual_seed(0)
    model = build_model(ModelSpec(family, shape, 7, CONFIGS[family].model_dump()))
    x = torch.randn(5, *shape)
    out = model(x)
    assert out.shape == (5, 7)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_rnn_initial_state_shapes(cell, bidirectional):
    cfg = RNNParams(cell=cell, hidden_size=10, num_layers=2, bidirectional=bidirectional)
    model = build_model(ModelSpec("rnn", (2, 9), 4, cfg.model_dump()))
    state = model.initial_state(3, torch.zeros(1))
    expected = (2 * (2 if bidirectional else 1), 3, 10)
    if cell == "lstm":
        assert isinstance(state, tuple) and [s.shape for s in state] == [expected, expected]
    else:
        assert state.shape == expected
    assert model(torch.randn(3, 2, 9)).shape == (3, 4)


def test_layer_sizes_follow_the_input_shape():
    small = build_model(ModelSpec("mlp", (1, 10), 3, MLPParams(width=8, depth=1).model_dump()))
    large = build_model(ModelSpec("mlp", (1, 100), 3, MLPParams(width=8, depth=1).model_dump()))
    assert small.net[1].in_features == 10 and large.net[1].in_features == 100


def test_width_and_depth_come_from_params():
    a = build_model(ModelSpec("cnn", (1, 40), 10, CNNParams(channels=8, depth=2).model_dump()))
    b = build_model(ModelSpec("cnn", (1, 40), 10, CNNParams(channels=16, depth=4).model_dump()))
    assert sum(p.numel() for p in b.parameters()) > sum(p.numel() for p in a.parameters())


def test_unknown_family_is_an_error():
    with pytest.raises(ValueError, match="unknown model family 'resnet'"):
        build_model(ModelSpec("resnet", (1, 40), 10, {}))


@pytest.mark.parametrize("family", CONFIGS)
def test_flops_are_counted(family):
    spec = ModelSpec(family, (1, 40), 10, CONFIGS[family].model_dump())
    prof = profile_model(build_model(spec), spec.input_shape, 10, batch_size=8)
    assert prof.flops_per_sample_inference > 0
    # A training step (forward + backward of 8 samples) costs more than 8 inferences.
    assert prof.flops_per_train_step > 8 * prof.flops_per_sample_inference
    assert prof.params_total > 0 and prof.param_bytes == 4 * prof.params_total


def test_linear_flops_match_the_textbook_count():
    spec = ModelSpec("mlp", (1, 40), 10, MLPParams(width=16, depth=1, dropout=0).model_dump())
    prof = profile_model(build_model(spec), spec.input_shape, 10, batch_size=4)
    assert prof.flops_per_sample_inference == 2 * (40 * 16 + 16 * 10)


def test_lstm_flops_are_reported_not_countable():
    spec = ModelSpec("rnn", (1, 40), 10, RNNParams(cell="lstm", hidden_size=8).model_dump())
    prof = profile_model(build_model(spec), spec.input_shape, 10, batch_size=4)
    assert prof.flops_per_sample_inference is None
    assert "not countable" in prof.flops_note and "LSTM" in prof.flops_note
