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
    """Every family, on every input layout, gives (batch, classes) logits, every parameter gets a
    non-zero gradient, and 30 Adam steps fit five samples: the eval-mode loss falls below 0.7 of
    the untrained one (measured over seeds 0-4: at most 0.46, for the GRU on 40 steps; at most 0.24
    for every other case)."""
    torch.manual_seed(0)
    model = build_model(ModelSpec(family, shape, 7, CONFIGS[family].model_dump()))
    x = torch.randn(5, *shape)
    y = torch.arange(5) % 7
    out = model(x)
    assert out.shape == (5, 7)
    loss = torch.nn.functional.cross_entropy(out, y)
    loss.backward()
    dead = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert not dead, dead
    with torch.no_grad():
        before = torch.nn.functional.cross_entropy(model.eval()(x), y).item()
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(30):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    with torch.no_grad():
        after = torch.nn.functional.cross_entropy(model.eval()(x), y).item()
    assert after < 0.7 * before, (before, after)


@pytest.mark.parametrize("family", CONFIGS)
def test_a_one_feature_input_builds_and_trains(family):
    """A table of one feature is a (1, 1) series: every family builds for it (the CNN sizes its
    head in eval mode, leaving its batch-norm statistics untouched) and trains on a batch of it."""
    torch.manual_seed(0)
    model = build_model(ModelSpec(family, (1, 1), 3, CONFIGS[family].model_dump()))
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            assert m.training and int(m.num_batches_tracked) == 0 and not m.running_mean.any()
    x, y = torch.randn(8, 1, 1), torch.arange(8) % 3
    torch.nn.functional.cross_entropy(model(x), y).backward()
    assert model.eval()(x[:1]).shape == (1, 3)


def test_a_training_pass_leaves_out_a_last_batch_of_one_sample():
    """Batch norm cannot train on one sample: a shuffled pass over 2n+1 samples in batches of n
    takes 2 batches (the left-out sample is in the next, reshuffled pass); an evaluation pass
    takes all 3."""
    from pipeline.training.data import TensorBatches

    x, y = torch.arange(9.0)[:, None, None], torch.arange(9)
    train = TensorBatches(x, y, 4, shuffle=True, seed=0)
    passes = [[b[1].tolist() for b in train] for _ in range(5)]
    assert len(train) == 2 and all(len(p) == 2 and [len(b) for b in p] == [4, 4] for p in passes)
    assert set().union(*(sum(p, []) for p in passes)) == set(range(9))
    assert [len(b[1]) for b in TensorBatches(x, y, 4, shuffle=False)] == [4, 4, 1]


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


@pytest.mark.parametrize("channels, depth", [(8, 2), (16, 4), (3, 1)])
def test_width_and_depth_come_from_params(channels, depth):
    """models.cnn.channels and .depth are the number of conv layers and the channels of each; for
    the MLP, width and depth are its hidden layers' count and size."""
    cnn = build_model(ModelSpec("cnn", (1, 40), 10, CNNParams(channels=channels, depth=depth).model_dump()))
    convs = [m for m in cnn.modules() if isinstance(m, torch.nn.Conv1d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(1, channels)] + [(channels, channels)] * (depth - 1)
    mlp = build_model(ModelSpec("mlp", (1, 40), 10, MLPParams(width=channels, depth=depth).model_dump()))
    linears = [m for m in mlp.modules() if isinstance(m, torch.nn.Linear)]
    assert [lin.out_features for lin in linears] == [channels] * depth + [10]
    small = build_model(ModelSpec("cnn", (1, 40), 10, CNNParams(channels=8, depth=2).model_dump()))
    big = build_model(ModelSpec("cnn", (1, 40), 10, CNNParams(channels=16, depth=4).model_dump()))
    assert sum(p.numel() for p in big.parameters()) > sum(p.numel() for p in small.parameters())


def test_unknown_family_is_an_error():
    with pytest.raises(ValueError, match="unknown model family 'resnet'"):
        build_model(ModelSpec("resnet", (1, 40), 10, {}))


@pytest.mark.parametrize("family", CONFIGS)
def test_flops_are_counted(family):
    """An inference does at least one multiply-add per weight of every weight matrix (exactly one
    for the MLP, 8.8-32x for the others, which reuse weights across positions or steps); a
    training step of 8 samples (forward + backward) at least twice 8 inferences (measured
    2.4-3.6x); the parameter count is the model's own."""
    from pipeline.models.family import weight_matrices

    spec = ModelSpec(family, (1, 40), 10, CONFIGS[family].model_dump())
    model = build_model(spec)
    prof = profile_model(model, spec.input_shape, 10, batch_size=8)
    weights = sum(getattr(m, name).numel() for m, name in weight_matrices(model))
    assert prof.flops_per_sample_inference >= 2 * weights
    assert prof.flops_per_train_step >= 2 * 8 * prof.flops_per_sample_inference
    assert prof.params_total == sum(p.numel() for p in model.parameters()) and prof.param_bytes == 4 * prof.params_total


def test_linear_flops_match_the_textbook_count():
    spec = ModelSpec("mlp", (1, 40), 10, MLPParams(width=16, depth=1, dropout=0).model_dump())
    prof = profile_model(build_model(spec), spec.input_shape, 10, batch_size=4)
    assert prof.flops_per_sample_inference == 2 * (40 * 16 + 16 * 10)


def test_conv_flops_match_the_textbook_count():
    """A 1-D CNN's FLOPs per sample are 2 x (in channels x out channels x kernel x output length)
    per conv layer plus the classifier's multiply-adds; BatchNorm, ReLU and pooling count none.
    Three layers of 8 channels, kernel 3, on 40 steps: lengths 40, 20, 10 (each pooled), 5 left."""
    spec = ModelSpec("cnn", (1, 40), 10, CNNParams(channels=8, depth=3, kernel_size=3).model_dump())
    prof = profile_model(build_model(spec), spec.input_shape, 10, batch_size=4)
    convs = 2 * (1 * 8 * 3 * 40 + 8 * 8 * 3 * 20 + 8 * 8 * 3 * 10)
    assert prof.flops_per_sample_inference == convs + 2 * (8 * 5) * 10


def test_lstm_flops_are_reported_not_countable():
    spec = ModelSpec("rnn", (1, 40), 10, RNNParams(cell="lstm", hidden_size=8).model_dump())
    prof = profile_model(build_model(spec), spec.input_shape, 10, batch_size=4)
    assert prof.flops_per_sample_inference is None
    assert "not countable" in prof.flops_note and "LSTM" in prof.flops_note
