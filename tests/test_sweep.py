"""The model-size sweep: scaled hyperparameters, one real (tiny) sweep point, and compare
plotting it beside the baseline."""
import json

import pytest

from pipeline import paths
from pipeline.config import ParamsError, parse_params
from pipeline.sweep import factor, scaled_hparams

from .conftest import tiny_raw


def test_scaled_hparams_multiply_width_and_depth_per_family():
    params = parse_params(tiny_raw())  # mlp 32x1, cnn 8x2, rnn 16x1, transformer d16 h2 l1
    assert scaled_hparams(params, "mlp", 2, 1)["width"] == 64
    cnn = scaled_hparams(params, "cnn", 0.5, 2)
    assert (cnn["channels"], cnn["depth"]) == (4, 4)
    assert scaled_hparams(params, "rnn", 0.5, 3)["num_layers"] == 3
    tr = scaled_hparams(params, "transformer", 1.3, 1)
    assert tr["d_model"] % tr["num_heads"] == 0 and tr["d_model"] == 20
    assert scaled_hparams(params, "transformer", 0.01, 0.01)["d_model"] == 2  # never below one head's width
    assert scaled_hparams(params, "mlp", 0.001, 0.001) == {**params.models.for_family("mlp").model_dump(), "width": 1, "depth": 1}


@pytest.mark.parametrize("text", ["0", "-1", "abc", "nan"])
def test_bad_factors_are_params_errors(text):
    with pytest.raises(ParamsError):
        factor(text, "width")


def test_sweep_params_are_validated():
    with pytest.raises(ParamsError, match="sweep: widths must not repeat"):
        parse_params(tiny_raw(**{"sweep.widths": [0.5, 0.5]}))
    with pytest.raises(ParamsError, match="sweep.depths"):
        parse_params(tiny_raw(**{"sweep.depths": [0]}))


def test_a_sweep_point_trains_tests_and_is_compared_beside_the_baseline(tiny_params, workdir, meter):
    """sweep --width 0.5 --depth 1: the model saved is the baseline's with half the width; its
    test accuracy is that model's on the test split; compare lists it beside the baseline with
    its own parameter count and training energy, and plots the sweep."""
    import torch

    from pipeline.data.prepare import prepare, save
    from pipeline.evaluation.evaluate import evaluate_family, load_trained
    from pipeline.reporting.compare import Filters
    from pipeline.reporting.report import load, write_outputs
    from pipeline.sweep import sweep_point
    from pipeline.training.train import train_family

    params = tiny_params()
    data = prepare(params)
    save(data, "mnist1d")
    train_family(params, "mlp", meter)
    evaluate_family(params, "mlp", meter=meter)
    m = sweep_point(params, "mlp", "0.5", "1", meter)
    variant = "sweep-w0.5-d1"
    on_disk = json.loads(paths.sweep_metrics("mlp", variant).read_text())
    assert on_disk["test_acc"] == m["test_acc"] and on_disk["width"] == 16 and on_disk["energy_j"] > 0
    assert (paths.model_dir("mlp", variant) / "model.pt").is_file() and paths.epoch_plot("mlp", variant).is_file()
    from pipeline.tracking import client_for

    client, _ = client_for(params.tracking)  # a logged model, its name as MLflow takes it (no ".")
    sweep_run = client.get_run(json.loads((paths.model_dir("mlp", variant) / "run.json").read_text())["run_id"])
    assert client.get_logged_model(sweep_run.data.tags["model_id"]).name == "mlp-sweep-w0_5-d1"
    model, spec, _ = load_trained("mlp", variant)
    baseline, base_spec, _ = load_trained("mlp")
    assert spec.hparams == {**base_spec.hparams, "width": base_spec.hparams["width"] // 2}
    with torch.inference_mode():
        pred = model(torch.from_numpy(data.arrays["x_test"]).float()).argmax(1).numpy()
    assert m["test_acc"] == pytest.approx(float((pred == data.arrays["y_test"]).mean()))

    cmp = load(params, Filters())
    rows = {r["variant"]: r for r in cmp.rows}
    assert set(rows) == {"baseline", variant}
    sweep = rows[variant]
    assert sweep["stage"] == "sweep" and sweep["test_acc"] == pytest.approx(m["test_acc"])
    assert sweep["params"] == sum(p.numel() for p in model.parameters())  # 826 against the baseline's 1642
    assert rows["baseline"]["params"] == sum(p.numel() for p in baseline.parameters()) > sweep["params"]
    # energy/* is the training's, the test energy is per 1,000 predictions
    assert sweep["train_energy_j"] == pytest.approx(m["energy_j"]) and sweep["energy_per_1k_j"] > 0
    assert load(params, Filters(stages=["sweep"])).rows[0]["variant"] == variant
    written = write_outputs(cmp, workdir / "reports")
    assert written["size_sweep"].stat().st_size > 5000
