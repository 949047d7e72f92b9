"""Which int8 quantization API to use on this CPU: PyTorch's eager ``torch.ao.quantization``
(dynamic and static) against ``torchao``'s ``quantize_`` configs, on the project's trained models.

For every family's trained model (``models/<family>/<source>``, from ``dvc repro`` or
``python -m pipeline train``): this process's CPU time per prediction over the test split at the
evaluation batch size and at batch 1 (medians of alternated repeats after a warm-up; CPU time,
not wall time, so that other work on a shared machine does not blur it), and the share of test
predictions equal to the fp32 model's. On this machine energy follows time (no hardware counter:
CPU load x TDP + fixed RAM power), so time per prediction decides.

torchao is not a dependency of the project; where it is importable (``pip install torchao``, or
``PYTHONPATH`` pointing at an installed copy) its configs are measured too, else reported absent.

    python benchmarks/quantization_backends.py [--families mlp cnn] [--source baseline] [--repeats 5]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.compression.quantize import quantize_dynamic, quantize_static, static_unsupported_reason  # noqa: E402
from pipeline.config import load_params  # noqa: E402
from pipeline.data.prepare import load_prepared  # noqa: E402
from pipeline.evaluation.evaluate import load_trained  # noqa: E402
from pipeline.training.data import split_tensors  # noqa: E402


def torchao_variants(model: torch.nn.Module) -> dict[str, torch.nn.Module | str]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, quantize_
    except Exception as err:  # not installed, or no build for this torch
        return {"torchao": f"not importable ({type(err).__name__})"}
    out: dict[str, torch.nn.Module | str] = {}
    for name, config in (("torchao int8 dyn-act/int8-weight", Int8DynamicActivationInt8WeightConfig()),
                         ("torchao int8 weight-only", Int8WeightOnlyConfig())):
        try:
            m = copy.deepcopy(model).eval()
            quantize_(m, config)
            out[name] = m
        except Exception as err:
            out[name] = f"failed: {type(err).__name__}: {str(err)[:80]}"
    return out


@torch.inference_mode()
def time_per_prediction_us(model, x: torch.Tensor, batch_size: int, min_s: float = 0.4) -> float:
    """CPU seconds of this process per prediction, in microseconds."""
    n, t0 = 0, time.process_time()
    while n == 0 or time.process_time() - t0 < min_s:
        for i in range(0, len(x), batch_size):
            model(x[i:i + batch_size])
        n += len(x)
    return (time.process_time() - t0) / n * 1e6


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", nargs="+", default=None)
    ap.add_argument("--source", default="baseline", choices=["baseline", "tuned"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    params = load_params(args.params)
    prepared = load_prepared(params.data.dataset)
    x_test, _ = split_tensors(prepared, "test")
    x_train, _ = split_tensors(prepared, "train")
    bs = params.evaluate.batch_size
    print(f"torch {torch.__version__}, engine {params.compress.quantize.engine}, {torch.get_num_threads()} threads; "
          f"CPU time per prediction in us (batch {bs} | batch 1), median of {args.repeats}; ratio to fp32 at batch {bs}")
    for family in args.families or params.families:
        model, spec, _ = load_trained(family, args.source)
        torch.backends.quantized.engine = params.compress.quantize.engine
        variants: dict[str, torch.nn.Module | str] = {"fp32": model, "torch.ao dynamic int8": quantize_dynamic(model, family)}
        if static_unsupported_reason(family) is None:
            calib = [x_train[i:i + 64] for i in range(0, 64 * params.compress.quantize.calibration_batches, 64)]
            variants["torch.ao static int8"] = quantize_static(model, family, calib, params.compress.quantize.engine)
        else:
            variants["torch.ao static int8"] = "no eager int8 kernels for this family"
        variants.update(torchao_variants(model))
        runnable = {k: v for k, v in variants.items() if not isinstance(v, str)}
        with torch.inference_mode():
            ref_pred = model(x_test).argmax(1)
            for name, m in list(runnable.items()):
                try:
                    m(x_test[:bs])
                except Exception as err:
                    variants[name] = f"failed at run time: {type(err).__name__}: {str(err)[:80]}"
                    runnable.pop(name)
        times: dict[str, list[float]] = {k: [] for k in runnable}
        times1: dict[str, list[float]] = {k: [] for k in runnable}
        for r in range(args.repeats):
            order = list(runnable) if r % 2 == 0 else list(reversed(runnable))  # alternate against drift
            for name in order:
                times[name].append(time_per_prediction_us(runnable[name], x_test, bs))
                times1[name].append(time_per_prediction_us(runnable[name], x_test[:200], 1, min_s=0.2))
        base = statistics.median(times["fp32"])
        print(f"\n{family} ({args.source}, {sum(p.numel() for p in model.parameters()):,} params)")
        for name, v in variants.items():
            if isinstance(v, str):
                print(f"  {name:34s} {v}")
                continue
            with torch.inference_mode():
                agree = float((v(x_test).argmax(1) == ref_pred).float().mean())
            t, t1 = statistics.median(times[name]), statistics.median(times1[name])
            print(f"  {name:34s} {t:8.2f} | {t1:8.1f}   ratio {t / base:5.2f}   agreement {agree:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
