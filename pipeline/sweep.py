"""The ``sweep`` stage: one point of a family's model-size sweep, trained and tested.

The point's model is the family's ``models.<family>`` with its width and depth multiplied by the
point's factors (the family's ``scale``: which parameters those are is the family's to say); it
trains with the baseline's budget (``train.*``) exactly as the train stage does, then is tested
on the held-out split as the evaluate stage does (accuracy, macro-F1, latency, energy per 1,000
predictions). Its MLflow run (tags ``stage=sweep``, ``variant``,
``sweep_width``, ``sweep_depth``) carries the training metrics and the test figures together, so
``compare`` plots accuracy and energy against parameters and FLOPs per family.

Test-time energy is logged under ``test/`` only: ``energy/*`` stays the training's.
"""
from __future__ import annotations

import math

from pipeline import paths
from pipeline.config import Params, ParamsError
from pipeline.energy import EnergyMeter
from pipeline.models.family import NOT_SCALABLE, get_family


def factor(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ParamsError(f"--{name} {text!r}: not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise ParamsError(f"--{name} {text!r}: must be a positive number")
    return value


def scaled_hparams(params: Params, family: str, width: float, depth: float) -> dict:
    """``models.<family>`` with its width and depth multiplied by the factors, as the family
    scales itself (rounded, at least 1, within its own constraints)."""
    scaled = get_family(family).scale(params.models.for_family(family), width, depth)
    if scaled is None:
        raise ParamsError(f"sweep: family {family!r} cannot be swept: {NOT_SCALABLE}")
    return scaled.model_dump()


def size_of(family: str, hparams: dict) -> dict:
    """The point's ``width`` and ``depth`` (the values of the family's width and depth
    parameters), where the family names them."""
    fam = get_family(family)
    return {k: hparams[p] for k, p in (("width", fam.width_param), ("depth", fam.depth_param)) if p is not None}


def sweep_point(params: Params, family: str, width: str, depth: str, meter: EnergyMeter | None = None) -> dict:
    """Train and test one sweep point; write its model, epoch history and metrics file; return
    the metrics. ``width`` and ``depth`` are the factors as written in params.yaml."""
    import torch

    from pipeline.compute import resolve_devices, resolve_eval_device
    from pipeline.data.prepare import load_prepared
    from pipeline.evaluation.evaluate import load_trained, measure_inference
    from pipeline.tracking import base_tags, tracked_run
    from pipeline.training.train import export_run, fit, write_metrics

    w, d = factor(width, "width"), factor(depth, "depth")
    hparams = scaled_hparams(params, family, w, d)
    # The point is tested where evaluate.device says: a device that is not here fails before training.
    resolve_eval_device(params.evaluate.device, resolve_devices(params.train).accelerator)
    meter = (meter or EnergyMeter(params.energy)).prewarm()
    prepared = load_prepared(params.data.dataset)
    card = prepared.card
    variant = paths.sweep_variant(width, depth)
    tags = {**base_tags("sweep", family, card), "variant": variant, "role": "sweep",
            "sweep_width": width, "sweep_depth": depth, "energy_method": "pending"}
    with tracked_run(params.tracking, f"sweep-{family}-w{width}-d{depth}", tags) as run:
        result = fit(params, family, prepared, meter, run, paths.model_dir(family, variant), hparams=hparams)
        export_run(result, run, family, variant, card,
                   extra={"sweep_width": w, "sweep_depth": d, "hparams": hparams})
        model, spec, trained = load_trained(family, variant, params.evaluate.device)
        x = torch.from_numpy(prepared.arrays["x_test"]).float()
        test = measure_inference(model, x, prepared.arrays["y_test"], spec.num_classes, params.evaluate, meter).metrics()
        tested = {f"test/{k.removeprefix('test_')}": v for k, v in test.items() if not isinstance(v, str)}
        run.log_metrics(tested)
        run.log_model_figures(trained.get("model_id"), tested)
        metrics = {"sweep_width": w, "sweep_depth": d, **size_of(family, hparams),
                   **{k: v for k, v in test.items() if k in ("test_acc", "test_f1_macro", "energy_per_1k_j",
                                                            "emissions_per_1k_kg", "latency_ms_per_sample")},
                   **result.metrics}
        write_metrics(metrics, paths.sweep_metrics(family, variant))
    return metrics
