import json
from pathlib import Path

import pytest
import torch

from pipeline import paths
from pipeline.data.prepare import prepare, save
from pipeline.evaluation.evaluate import confusion, evaluate_family, macro_f1
from pipeline.tracking import client_for
from pipeline.training.train import train_family


@pytest.fixture
def prepared(tiny_params, workdir):
    p = prepare(tiny_params())
    save(p, "mnist1d")
    return p


def _runs(params, stage):
    client, _ = client_for(params.tracking)
    exp = client.get_experiment_by_name(params.tracking.experiment_name)
    return client.search_runs([exp.experiment_id], f"tags.stage = '{stage}'")


def test_same_params_train_to_the_same_accuracy(tiny_params, prepared, meter):
    # Bit-identical for the same torch threads: train.threads auto follows the processes computing
    # beside it (another test's, here), and a convolution summed on 1 or 2 threads rounds differently.
    params = tiny_params(**{"train.threads": 1})
    a = train_family(params, "cnn", meter, prepared)
    w_a = torch.load(paths.model_dir("cnn") / "model.pt", weights_only=True)
    b = train_family(params, "cnn", meter, prepared)
    w_b = torch.load(paths.model_dir("cnn") / "model.pt", weights_only=True)
    assert a["val_acc"] == b["val_acc"]
    assert all(torch.equal(w_a[k], w_b[k]) for k in w_a)


def _saved_model_test_acc(prepared, family, variant="baseline"):
    """Accuracy of models/<family>/<variant>/ on the test split, computed here, not by evaluate."""
    from pipeline.evaluation.evaluate import load_trained

    model, _, _ = load_trained(family, variant)
    with torch.inference_mode():
        pred = model(torch.from_numpy(prepared.arrays["x_test"]).float()).argmax(1).numpy()
    return float((pred == prepared.arrays["y_test"]).mean()), pred


def test_train_then_evaluate_records_everything(tiny_params, prepared, meter):
    """train then evaluate: the figures each writes are those of the saved model and of the
    energy it measured (test accuracy and F1 are the saved model's on the test split, the energy
    per 1,000 predictions is the evaluate run's energy over its predictions, epochs' energies fit
    in the training's, FLOPs per joule is the counted work over that energy), and both MLflow
    runs carry them."""
    params = tiny_params()
    m = train_family(params, "mlp", meter, prepared)
    assert m["epochs"] == 2
    assert m["flops_per_joule"] * m["energy_j"] == pytest.approx(m["train_flops_total"])
    n_train, n_val = len(prepared.arrays["y_train"]), len(prepared.arrays["y_val"])
    # every epoch: each training sample forward and backward (at least two forwards), each val one forward
    assert m["train_flops_total"] >= m["epochs"] * (2 * n_train + n_val) * m["flops_per_sample_inference"]
    assert json.loads(paths.train_metrics("mlp").read_text())["val_acc"] == m["val_acc"]
    history = paths.epoch_plot("mlp").read_text().splitlines()
    assert history[0].startswith("epoch,") and len(history) == 3

    (run,) = _runs(params, "train")
    assert run.info.status == "FINISHED"
    assert {"family", "stage", "git_commit", "data_hash", "energy_method"} <= set(run.data.tags)
    assert run.data.tags["data_hash"] == prepared.card["sha256"] and run.data.tags["dataset"] == "mnist1d"
    for key in ("final/val_acc", "energy/total_j", "energy/cpu_kwh", "energy/ram_kwh", "energy/emissions_kg",
                "model/params_total", "energy/epoch_j", "energy/epoch_mean_power_w", "train/loss", "val/acc"):
        assert key in run.data.metrics, key
    client, _ = client_for(params.tracking)
    assert run.data.metrics["energy/total_j"] == pytest.approx(m["energy_j"])
    epochs = client.get_metric_history(run.info.run_id, "energy/epoch_j")
    assert [e.step for e in epochs] == [0, 1] and all(e.value > 0 for e in epochs)
    assert sum(e.value for e in epochs) <= m["energy_j"] * (1 + 1e-9)  # parts of the training's measurement
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"best.ckpt", "spec.json", "data_card.json", "energy.json", "mlp-baseline.csv"} <= artifacts

    e = evaluate_family(params, "mlp", meter=meter)
    acc, pred = _saved_model_test_acc(prepared, "mlp")
    assert e["test_acc"] == pytest.approx(acc)
    assert e["test_f1_macro"] == pytest.approx(macro_f1(prepared.arrays["y_test"], pred, 10))
    # a single prediction takes more than a microsecond and less than a second (a unit slip fails)
    assert 1e-3 < e["latency_ms_per_sample"] < 1000
    assert e["energy_rounds"] == params.evaluate.energy_rounds and e["energy_per_1k_j_spread"] >= 0
    assert e["inference_threads"] == params.evaluate.num_threads == 1
    assert e["inference_allocator"] == "glibc-steady"  # Linux/glibc, as on every machine of this project
    # evaluate.device: train (the default) is where run.json says the model was trained.
    assert json.loads((paths.model_dir("mlp") / "run.json").read_text())["compute"]["accelerator"] == "cpu"
    assert e["inference_device"] == "cpu"
    n_test = len(prepared.arrays["y_test"])  # whole passes over the test split, at least one per round
    assert e["predictions_measured"] % n_test == 0 and e["predictions_measured"] >= params.evaluate.energy_rounds * n_test
    (ev,) = _runs(params, "evaluate")
    assert ev.data.tags["variant"] == "baseline"
    assert ev.data.tags["energy_backend"] == run.data.tags["energy_backend"] == "codecarbon"
    assert ev.data.tags["source_run_id"] == run.info.run_id
    (run,) = _runs(params, "train")
    assert run.data.metrics["test/acc"] == e["test_acc"]  # sortable next to the training energy
    assert ev.data.metrics["test/acc"] == e["test_acc"]
    assert e["energy_per_1k_j"] == pytest.approx(ev.data.metrics["energy/total_j"] / e["predictions_measured"] * 1000)
    assert ev.data.metrics["test/energy_per_1k_j"] == pytest.approx(e["energy_per_1k_j"])
    assert paths.confusion_plot("mlp").stat().st_size > 1000
    logged = json.loads(Path(client.download_artifacts(ev.info.run_id, "confusion_matrix.json")).read_text())
    assert logged["matrix"] == confusion(prepared.arrays["y_test"], pred, 10).tolist()
    assert logged["classes"] == prepared.card["classes"]


def test_the_mlflow_ui_gets_datasets_logged_models_and_a_registered_knee(tiny_params, prepared, meter, capsys):
    """What the MLflow UI shows by default: each run's data as a dataset input (the card's name
    and digest), its name telling stage, model and commit apart, the trained model as a logged
    model of its run with accuracy and energy linked to it (training figures by the train run,
    test figures by the evaluation, which takes the model as its input); the report registers
    its knee model under an alias, once."""
    import yaml

    from pipeline.cli import main

    from .conftest import tiny_raw

    Path("params.yaml").write_text(yaml.safe_dump({**tiny_raw(), "families": ["mlp"]}))  # for the report
    params = tiny_params(**{"families": ["mlp"]})
    m = train_family(params, "mlp", meter, prepared)
    e = evaluate_family(params, "mlp", meter=meter)
    client, _ = client_for(params.tracking)
    (train,), (ev,) = _runs(params, "train"), _runs(params, "evaluate")
    for run, context in ((train, "training"), (ev, "evaluation")):
        (inp,) = run.inputs.dataset_inputs
        assert (inp.dataset.name, inp.dataset.digest) == ("mnist1d", prepared.card["sha256"][:12])
        assert {t.key: t.value for t in inp.tags}["mlflow.data.context"] == context
    assert train.info.run_name.startswith("train-mlp") and ev.info.run_name.startswith("evaluate-mlp-baseline")
    assert train.info.run_name != ev.info.run_name
    model_id = json.loads((paths.model_dir("mlp") / "run.json").read_text())["model_id"]
    assert train.data.tags["model_id"] == model_id
    assert [o.model_id for o in train.outputs.model_outputs] == [model_id]
    assert [i.model_id for i in client.get_run(ev.info.run_id).inputs.model_inputs] == [model_id]
    model = client.get_logged_model(model_id)
    assert model.name == "mlp-baseline" and model.source_run_id == train.info.run_id and model.status == "READY"
    figures = {x.key: (x.value, x.run_id, x.dataset_name) for x in model.metrics}
    assert figures["final/val_acc"] == (m["val_acc"], train.info.run_id, "mnist1d")
    assert figures["final/energy_j"][:2] == (pytest.approx(m["energy_j"]), train.info.run_id)
    assert figures["test/acc"] == (e["test_acc"], ev.info.run_id, "mnist1d")
    assert figures["test/energy_per_1k_j"][:2] == (pytest.approx(e["energy_per_1k_j"]), ev.info.run_id)
    assert {a.path for a in client.list_logged_model_artifacts(model_id)} == {"model.pt", "spec.json"}

    for _ in range(2):  # the same knee twice: one version
        assert main(["report"]) == 0
    assert "(registered: energy-pipeline-knee version 1)" in capsys.readouterr().out
    knee = client.get_model_version_by_alias("energy-pipeline-knee", "knee")
    assert knee.source == f"models:/{model_id}" and str(knee.version) == "1"


def test_target_accuracy_energy_is_logged_only_when_reached(tiny_params, prepared, meter):
    reached = train_family(tiny_params(**{"train.target_val_acc": 0.05}), "mlp", meter, prepared)
    assert reached["epochs_to_target"] == 1 and 0 < reached["energy_to_target_j"] <= reached["energy_j"]
    never = train_family(tiny_params(**{"train.target_val_acc": 1.0}), "mlp", meter, prepared)
    assert "energy_to_target_j" not in never and "time_to_target_s" not in never


def test_nan_loss_fails_the_run_and_keeps_its_energy(tiny_params, prepared, meter):
    params = tiny_params(**{"train.optimizer": "sgd", "train.lr": 1e30})
    with pytest.raises(FloatingPointError, match="train.lr"):
        train_family(params, "mlp", meter, prepared)
    (run,) = _runs(params, "train")
    assert run.info.status == "FAILED"
    assert run.data.tags["error"].startswith("NonFiniteLoss: training loss became")
    assert run.data.metrics["energy/total_j"] > 0
    assert not paths.train_metrics("mlp").exists()


def test_macro_f1_and_confusion_matrix_on_a_hand_made_case():
    import numpy as np
    from sklearn.metrics import confusion_matrix, f1_score

    y = np.array([0, 0, 1, 1, 2])
    p = np.array([0, 1, 1, 1, 0])
    cm = confusion(y, p, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    # per-class F1: 1/2, 4/5, 0
    assert macro_f1(y, p, 3) == pytest.approx((0.5 + 0.8 + 0) / 3)
    assert macro_f1(y, p, 3) == pytest.approx(f1_score(y, p, average="macro"))
    # Class 3 has no test sample and is never predicted: its row and column are zeros, and it
    # counts in the average with F1 0, as in scikit-learn with these labels.
    cm4 = confusion(y, p, 4)
    assert cm4.shape == (4, 4) and cm4[3].sum() == cm4[:, 3].sum() == 0
    assert (cm4 == confusion_matrix(y, p, labels=range(4))).all()
    assert macro_f1(y, p, 4) == pytest.approx((0.5 + 0.8 + 0 + 0) / 4)
    assert macro_f1(y, p, 4) == pytest.approx(f1_score(y, p, average="macro", labels=range(4), zero_division=0))


def test_confusion_plot_names_few_classes_and_stays_readable_with_many(monkeypatch, tmp_path):
    """Few classes: their labels on the axes and each count in its cell. Many (120): no count
    text and at most a dozen ticks per axis, so the plot stays a readable heat map."""
    import matplotlib.figure
    import numpy as np

    from pipeline.evaluation.evaluate import plot_confusion

    figures = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: figures.append(fig))
    plot_confusion(np.array([[5, 1, 0], [0, 4, 2], [1, 0, 6]]), "few", tmp_path / "few.png", ["cat", "dog", "owl"])
    plot_confusion(np.eye(120, dtype=int) * 3, "many", tmp_path / "many.png", list(range(120)))
    few, many = (fig.axes[0] for fig in figures)
    assert [t.get_text() for t in few.get_xticklabels()] == ["cat", "dog", "owl"]
    assert sorted(t.get_text() for t in few.texts) == sorted(["5", "1", "4", "2", "1", "6"])
    assert not many.texts and len(many.get_xticks()) <= 14 and "index" in many.get_xlabel()


def test_evaluate_works_when_the_training_run_is_not_in_the_store(tiny_params, prepared, meter, caplog):
    """A model restored from DVC's cache after mlruns/ was deleted points at a run the store no
    longer holds: evaluation still runs and logs its figures on its own run."""
    params = tiny_params()
    train_family(params, "mlp", meter, prepared)
    run_json = paths.model_dir("mlp", "baseline") / "run.json"
    info = json.loads(run_json.read_text())
    info["run_id"] = "0" * 32
    run_json.write_text(json.dumps(info))
    e = evaluate_family(params, "mlp", meter=meter)
    assert e["test_acc"] == pytest.approx(_saved_model_test_acc(prepared, "mlp")[0])
    assert json.loads(paths.evaluate_metrics("mlp").read_text())["test_acc"] == e["test_acc"]
    assert "is not in this MLflow store" in caplog.text
    (ev,) = _runs(params, "evaluate")
    assert ev.info.status == "FINISHED" and ev.data.tags["source_run_id"] == "0" * 32


def test_training_learns_a_learnable_task_well_above_chance(tiny_params, workdir, meter):
    """The train stage learns: the tiny MLP of the tests' params (2 epochs) on scikit-learn's
    digits reaches a test accuracy far above chance (1/10). Measured for base.seed 1-5 and 7:
    0.78-0.86 (val 0.70-0.85); the bound 0.5 is five times chance. (On the tests' 600 MNIST-1D
    samples the same model reaches only 0.16-0.26, too close to chance to tell.)"""
    params = tiny_params(**{"data.dataset": "digits"})
    data = prepare(params)
    save(data, "digits")
    m = train_family(params, "mlp", meter, data)
    acc, _ = _saved_model_test_acc(data, "mlp")
    print(f"digits, tiny mlp: val {m['val_acc']:.3f}, test {acc:.3f}")
    assert m["val_acc"] > 0.5 and acc > 0.5
    assert evaluate_family(params, "mlp", meter=meter)["test_acc"] == pytest.approx(acc)


@pytest.mark.parametrize("optimizer", ["adagrad", "rmsprop", {"target": "torch.optim:NAdam", "momentum_decay": 0.003}])
def test_optimizers_by_name_or_import_path_and_a_scheduler(tiny_params, prepared, meter, optimizer):
    """AdaGrad and RMSprop are built in; any torch optimizer comes by import path with its keywords,
    a scheduler too (stepped once per epoch); both are recorded on the run."""
    import torch

    from pipeline.training.module import build_optimizer, build_scheduler

    params = tiny_params(**{"train.optimizer": optimizer, "train.lr": 0.01, "train.max_epochs": 2,
                            "train.early_stopping_patience": 0,
                            "train.scheduler": {"target": "torch.optim.lr_scheduler:StepLR", "step_size": 1, "gamma": 0.5}})
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(1))], params.train)
    want = torch.optim.NAdam if isinstance(optimizer, dict) else {"adagrad": torch.optim.Adagrad,
                                                                   "rmsprop": torch.optim.RMSprop}[optimizer]
    assert type(opt) is want and opt.defaults["lr"] == 0.01
    if isinstance(optimizer, dict):
        assert opt.defaults["momentum_decay"] == 0.003
    sched = build_scheduler(opt, params.train)
    assert isinstance(sched, torch.optim.lr_scheduler.StepLR)
    train_family(params, "mlp", meter, prepared)
    (run,) = _runs(params, "train")
    logged = run.data.params
    assert logged["train.scheduler.target"] == "torch.optim.lr_scheduler:StepLR"
    assert (logged.get("train.optimizer") or logged.get("train.optimizer.target")) in (optimizer, "torch.optim:NAdam")
    assert run.data.metrics["lr"] == pytest.approx(0.01 * 0.5)  # the second epoch's, after one step


def test_whole_epochs_train_exactly_as_lightnings_batch_by_batch_loop(tiny_params, prepared):
    """One process hands Lightning one item per epoch (``WholeEpochs``) and steps through the
    epoch's mini-batches itself; a DDP rank takes them one by one through Lightning's loop. From
    the same seed both make the same optimizer steps: same step count, same weights, same epoch
    metrics."""
    import lightning.pytorch as pl

    from pipeline.models.factory import build_model
    from pipeline.training.data import TensorBatches, WholeEpochs, split_tensors
    from pipeline.training.module import Classifier
    from pipeline.training.train import model_spec, quiet_lightning, torch_flags_restored

    quiet_lightning()
    params = tiny_params()
    spec = model_spec(params, "cnn", prepared)

    def train(wrap):
        torch.manual_seed(0)
        module = Classifier(build_model(spec), spec.num_classes, params.train)
        train = TensorBatches(*split_tensors(prepared, "train"), 16, shuffle=True, seed=3)
        val = TensorBatches(*split_tensors(prepared, "val"), 64, shuffle=False)
        trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
        metrics = []

        class Keep(pl.Callback):
            def on_train_epoch_end(self, trainer, module):
                metrics.append(module.compute_train_metrics())

        trainer.callbacks.append(Keep())
        with torch_flags_restored():
            trainer.fit(module, train_dataloaders=wrap(train), val_dataloaders=val)
        return trainer.global_step, module.model.state_dict(), metrics, module.last_val

    steps_e, weights_e, metrics_e, val_e = train(WholeEpochs)
    steps_b, weights_b, metrics_b, val_b = train(lambda batches: batches)
    assert steps_e == steps_b == 2 * -(-len(prepared.arrays["y_train"]) // 16)
    assert all(torch.equal(weights_e[k], weights_b[k]) for k in weights_b)
    assert metrics_e == metrics_b and val_e == val_b
