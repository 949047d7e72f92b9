"""``python -m pipeline <stage>``: one command per DVC stage.

Heavy libraries (torch, Lightning, MLflow) are imported inside the commands that need them, so
``--help`` answers at once. Expected failures (bad params, bad data) print one clear message and
exit with status 2; an interrupt exits 130.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.config import FAMILIES, ParamsError, load_params

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def _family(value: str) -> str:
    if value not in FAMILIES:
        raise argparse.ArgumentTypeError(f"unknown family {value!r}; choose from {', '.join(FAMILIES)}")
    return value


def cmd_prepare(args) -> int:
    from pipeline.data.prepare import prepare, save

    params = load_params(args.params)
    prepared = prepare(params)
    data_path, card_path = save(prepared, params.data.dataset)
    card = prepared.card
    print(f"prepared {card['dataset']}: input {card['input_shape']}, {card['num_classes']} classes, "
          f"split {card['num_samples']} -> {data_path} (sha256 {card['sha256'][:12]})")
    return 0


def _meter(params):
    """Start CodeCarbon's hardware probe now, so it overlaps the heavy imports that follow."""
    from pipeline.energy import EnergyMeter

    return EnergyMeter(params.energy).prewarm()


def cmd_train(args) -> int:
    params = load_params(args.params)
    meter = _meter(params)
    from pipeline.training.train import train_family

    m = train_family(params, args.family, meter)
    energy = f"{m['energy_j']:.1f} J" if "energy_j" in m else "energy unavailable"
    print(f"trained {args.family}: val/acc {m['val_acc']:.4f} (best epoch {m['best_epoch'] + 1}/{m['epochs']}), "
          f"{m['duration_s']:.1f} s, {energy}, {m['params']} params")
    return 0


def cmd_tune(args) -> int:
    params = load_params(args.params)
    meter = _meter(params)
    from pipeline.tuning.tune import tune_family

    m = tune_family(params, args.family, meter)
    print(f"tuned {args.family}: {m['trials']} trials ({m['trials_complete']} complete, {m['trials_pruned']} pruned, "
          f"{m['trials_failed']} failed), search {m.get('search_energy_j', float('nan')):.1f} J; chosen trial "
          f"{m['chosen_trial']} refit to val/acc {m['val_acc']:.4f}")
    return 0


def cmd_evaluate(args) -> int:
    params = load_params(args.params)
    meter = _meter(params)
    from pipeline.evaluation.evaluate import evaluate_family

    m = evaluate_family(params, args.family, args.variant, meter)
    energy = f"{m['energy_per_1k_j']:.3f} J/1k predictions" if "energy_per_1k_j" in m else "energy unavailable"
    print(f"evaluated {args.family} ({args.variant}): test/acc {m['test_acc']:.4f}, macro-F1 {m['test_f1_macro']:.4f}, "
          f"{m['latency_ms_per_sample']:.3f} ms/sample, {energy}")
    return 0


def cmd_report(args) -> int:
    from pipeline.reporting.report import write_report

    params = load_params(args.params)
    out = write_report(params)
    print(f"report written: {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__.splitlines()[0])
    p.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (default: params.yaml)")
    sub = p.add_subparsers(dest="command", required=True, metavar="<stage>")
    sub.add_parser("prepare", help="build the dataset, split it, write data/prepared/ and its card").set_defaults(func=cmd_prepare)
    for name, func, text in (
        ("train", cmd_train, "train one model family (Lightning), measured and tracked"),
        ("tune", cmd_tune, "Optuna search for one family (every trial measured), then refit the chosen trial"),
        ("evaluate", cmd_evaluate, "evaluate one trained family on the held-out test split"),
    ):
        sp = sub.add_parser(name, help=text)
        sp.add_argument("--family", required=True, type=_family, help=f"one of: {', '.join(FAMILIES)}")
        if name == "evaluate":
            sp.add_argument("--variant", default="baseline", choices=["baseline", "tuned"],
                            help="the train stage's model (baseline) or the search's (tuned)")
        sp.set_defaults(func=func)
    sub.add_parser("report", help="compare families: Markdown table, accuracy-vs-energy plot, DVC plot data").set_defaults(func=cmd_report)
    return p


def main(argv: list[str] | None = None) -> int:
    import logging

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except ParamsError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:
        from pipeline.data.sources import DataError

        if isinstance(err, DataError):
            print(f"error: {err}", file=sys.stderr)
            return EXIT_BAD_INPUT
        raise
