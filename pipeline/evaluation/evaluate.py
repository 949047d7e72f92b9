"""The ``evaluate`` stage: a trained model on the held-out test split, measured and tracked.

Quality: accuracy, macro-F1, confusion matrix. Cost: latency per sample (batch of one), throughput
at the evaluation batch size, and energy per 1,000 predictions, measured over repeated passes
of the test split lasting at least ``evaluate.energy_min_duration_s`` in ``evaluate.energy_rounds``
rounds, with ``evaluate.num_threads`` torch threads (see ``inference_energy``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from pipeline import paths, worktime
from pipeline.compute import resolve_eval_device
from pipeline.config import EvaluateCfg, Params
from pipeline.data.prepare import load_prepared
from pipeline.data.source import DataError
from pipeline.energy import EnergyMeter, EnergyReading
from pipeline.evaluation.inference_energy import (
    RoundReadings,
    allocator_setting,
    inference_threads,
    measure_rounds,
    model_device,
    predict,
    steady_allocator,
    synchronize,
)
from pipeline.models import saved
from pipeline.models.factory import ModelSpec
from pipeline.tracking import base_tags, tracked_run
from pipeline.uncertainty import Spread


def load_trained(family: str, variant: str = paths.BASELINE, device: str = "cpu") -> tuple[nn.Module, ModelSpec, dict]:
    """A trained model of ``family`` (``models/<family>/<variant>/``, see ``models.saved``) on
    ``device`` (``evaluate.device``: ``train`` is where it was trained), its spec and its
    run.json; a missing file names the stage that makes it."""
    d = paths.model_dir(family, variant)
    files = [d / saved.SPEC, d / saved.MODEL, d / "run.json"]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        stage = "train" if variant == paths.BASELINE else "tune"
        raise DataError(f"{', '.join(missing)}: trained model not found; "
                        f"run `python -m pipeline {stage} --family {family}` first")
    model, spec = saved.load_model(d)
    run = saved.read_record(files[2], "run record")
    return model.to(resolve_eval_device(device, trained_on(run))), spec, run


def trained_on(run: dict) -> str:
    """Where a model was trained, from its run.json (written before devices were recorded: the CPU)."""
    return run.get("compute", {}).get("accelerator", "cpu")


def confusion(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts of (true class, predicted class), one row and one column per class 0..num_classes-1."""
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(y_true, y_pred, labels=list(range(num_classes))).astype(np.int64)


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    """F1 of each class 0..num_classes-1, averaged with equal weights (scikit-learn's). A class
    with neither a test sample nor a prediction scores 0; with the prepare stage's stratified
    split that is only a class too rare to get its share of the test split."""
    from sklearn.metrics import f1_score

    return float(f1_score(y_true, y_pred, average="macro", labels=list(range(num_classes)), zero_division=0))


@torch.inference_mode()
def latency_per_sample_s(model: nn.Module, x: torch.Tensor, n: int) -> float:
    """Median time of a single-sample prediction, after a warm-up."""
    device = model_device(model)
    samples = x[: max(1, min(n, len(x)))].to(device)
    for i in range(min(10, len(samples))):
        model(samples[i:i + 1])
    times = []
    for i in range(len(samples)):
        synchronize(device)
        t0 = time.perf_counter()
        model(samples[i:i + 1])
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


#: Up to this many classes the confusion plot writes every count in its cell and names every
#: class on its axes; beyond, the colours alone carry the counts and the axes every k-th index.
CONFUSION_ANNOTATED_CLASSES = 20


def plot_confusion(cm: np.ndarray, title: str, path: Path, classes: list | None = None) -> None:
    """The confusion matrix as a heat map. ``classes``: the label of each index (the data card's);
    shown on the axes while they are few and short enough to read."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    k = cm.shape[0]
    side = min(4.8 + 0.12 * max(0, k - 10), 9.0)
    fig, ax = plt.subplots(figsize=(side * 1.15, side))
    im = ax.imshow(cm, cmap="Blues", interpolation="nearest")
    few = k <= CONFUSION_ANNOTATED_CLASSES
    named = few and classes is not None and [str(c) for c in classes] != [str(i) for i in range(k)]
    ax.set_xlabel("predicted class" + ("" if few or named else " (index)"))
    ax.set_ylabel("true class" + ("" if few or named else " (index)"))
    ax.set_title(title)
    if few:
        ax.set_xticks(range(k))
        ax.set_yticks(range(k))
        if named:
            labels = [str(c) if len(str(c)) <= 16 else str(c)[:15] + "…" for c in classes]
            ax.set_xticklabels(labels, rotation=90 if max(map(len, labels)) > 3 else 0)
            ax.set_yticklabels(labels)
        thresh = cm.max() / 2 if cm.size else 0
        for (i, j), v in np.ndenumerate(cm):
            if v:
                ax.text(j, i, str(v), ha="center", va="center", fontsize=7,
                        color="white" if v > thresh else "black")
    else:
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_locator(MaxNLocator(nbins=12, integer=True))
    fig.colorbar(im, ax=ax, fraction=0.046, label="test samples")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@dataclass(frozen=True)
class InferenceMeasurement:
    """Quality and cost of one model on the test split, measured by ``measure_inference``."""

    y_pred: np.ndarray
    cm: np.ndarray
    acc: float
    f1: float
    latency_s: float  # median single-sample prediction time
    rounds: RoundReadings  # energy of the measured predictions, one reading per round
    threads: int  # torch threads during the measurement
    allocator: str = "default"  # "glibc-steady" when the allocator thresholds were fixed
    device: str = "cpu"  # where the predictions ran

    @property
    def n_pred(self) -> int:
        return self.rounds.n_pred

    @property
    def energy(self) -> EnergyReading:
        return self.rounds.total

    def metrics(self) -> dict[str, float]:
        """The evaluate stage's flat metrics (names as in metrics/evaluate/*.json)."""
        energy, n_pred = self.energy, self.n_pred
        metrics: dict[str, float] = {
            "test_acc": self.acc,
            "test_f1_macro": self.f1,
            "test_samples": len(self.y_pred),  # the accuracy's standard error follows from it
            "latency_ms_per_sample": self.latency_s * 1e3,
            "throughput_per_s": n_pred / energy.duration_s,
            "predictions_measured": n_pred,
            "energy_rounds": len(self.rounds.readings),
            "inference_threads": self.threads,
            "inference_allocator": self.allocator,
            "inference_device": self.device,
            "energy_method": energy.method,
        }
        if energy.energy_j is not None:
            metrics["energy_per_1k_j"] = energy.energy_j / n_pred * 1000
            metrics["emissions_per_1k_kg"] = energy.emissions_kg / n_pred * 1000
            metrics["inference_mean_power_w"] = energy.mean_power_w
            spread = self.rounds.spread()
            if spread is not None:
                metrics["energy_per_1k_j_spread"] = spread
            rounds = Spread.of(self.rounds.per_1k_j() or [])
            if rounds is not None and rounds.sem is not None:
                metrics["energy_per_1k_j_se"] = rounds.sem  # standard error over the rounds
        return metrics


class Quality(NamedTuple):
    """A model's test-split quality and latency: the leading fields of ``InferenceMeasurement``."""

    y_pred: np.ndarray
    cm: np.ndarray
    acc: float
    f1: float
    latency_s: float  # median single-sample prediction time


def quality(model: nn.Module, x: torch.Tensor, y: np.ndarray, num_classes: int, cfg: EvaluateCfg) -> Quality:
    """Predictions, confusion matrix, accuracy, macro-F1 and latency per sample on (x, y)."""
    with worktime.counted(), inference_threads(cfg.num_threads):
        y_pred = predict(model, x, cfg.batch_size).numpy()
        latency = latency_per_sample_s(model, x, cfg.latency_samples)
    cm = confusion(y, y_pred, num_classes)
    return Quality(y_pred, cm, float((y_pred == y).mean()), macro_f1(y, y_pred, num_classes), latency)


def energy_rounds(models: dict[str, nn.Module], x: torch.Tensor, cfg: EvaluateCfg, meter: EnergyMeter
                  ) -> dict[str, RoundReadings]:
    """Prediction energy of each model with the evaluate block's protocol (models interleaved)."""
    if cfg.steady_allocator:
        steady_allocator()
    with inference_threads(cfg.num_threads):
        return measure_rounds(models, x, cfg.batch_size, cfg.energy_min_duration_s, cfg.energy_rounds, meter)


def measured_threads(cfg: EvaluateCfg) -> int:
    return cfg.num_threads or torch.get_num_threads()


def measure_inference(model: nn.Module, x: torch.Tensor, y: np.ndarray, num_classes: int, cfg: EvaluateCfg,
                      meter: EnergyMeter) -> InferenceMeasurement:
    """Accuracy and macro-F1 on (x, y); latency per sample (batch of one); energy of repeated
    passes over x at ``cfg.batch_size`` lasting at least ``cfg.energy_min_duration_s``."""
    q = quality(model, x, y, num_classes, cfg)
    rounds = energy_rounds({"model": model}, x, cfg, meter)["model"]
    return InferenceMeasurement(*q, rounds, measured_threads(cfg), allocator_setting(), str(model_device(model)))


def evaluate_family(params: Params, family: str, variant: str = paths.BASELINE,
                    meter: EnergyMeter | None = None) -> dict:
    meter = (meter or EnergyMeter(params.energy)).prewarm()
    torch.manual_seed(params.base.seed)
    prepared = load_prepared(params.data.dataset)
    model, spec, train_run = load_trained(family, variant, params.evaluate.device)
    x = torch.from_numpy(prepared.arrays["x_test"]).float()
    y = prepared.arrays["y_test"]
    card = prepared.card
    tags = base_tags("evaluate", family, card)
    tags["source_run_id"] = train_run.get("run_id", "unknown")
    tags["variant"] = variant
    with tracked_run(params.tracking, f"evaluate-{family}-{variant}", tags) as run:
        run.log_params({"family": family, "evaluate": params.evaluate.model_dump(), "model": spec.hparams})
        result = measure_inference(model, x, y, spec.num_classes, params.evaluate, meter)
        run.set_tags({**meter.tags(), "inference_allocator": result.allocator,
                      "inference_device": result.device})
        cm, acc, f1, energy = result.cm, result.acc, result.f1, result.energy
        metrics = result.metrics()
        run.log_metrics({f"test/{k.removeprefix('test_')}": v for k, v in metrics.items() if not isinstance(v, str)})
        run.log_metrics(energy.metrics("energy"))
        # The training run gets its test figures too, so one row of the MLflow table holds test
        # accuracy next to training energy, sortable by either.
        if train_run.get("run_id"):
            run.log_metrics_to(train_run["run_id"], {
                "test/acc": acc, "test/f1_macro": f1, "test/samples": metrics["test_samples"],
                **{f"test/{k}": metrics.get(k) for k in ("energy_per_1k_j", "energy_per_1k_j_se")}})
        run.log_model_figures(train_run.get("model_id"), {"test/acc": acc,
                                                          "test/energy_per_1k_j": metrics.get("energy_per_1k_j")})

        cm_path = paths.confusion_plot(family, variant)
        cm_path.parent.mkdir(parents=True, exist_ok=True)
        plot_confusion(cm, f"{family} ({variant}): test accuracy {acc:.3f}", cm_path, card.get("classes"))
        run.log_artifact(cm_path)
        # rows: true class, columns: predicted; "classes" names each index as the data card does
        run.log_dict({"labels": list(range(spec.num_classes)), "classes": card.get("classes"),
                      "matrix": cm.tolist()}, "confusion_matrix.json")
        run.log_dict(energy.to_dict(), "energy.json")
        paths.write_json(metrics, paths.evaluate_metrics(family, variant))
    return metrics
