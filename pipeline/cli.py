"""``python -m pipeline <stage>``: one command per DVC stage.

Heavy libraries (torch, Lightning, MLflow) are imported inside the commands that need them, so
``--help`` answers at once. Expected failures (bad params, bad data) print one clear message and
exit with status 2; an interrupt exits 130.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from pipeline import interrupts
from pipeline.config import ParamsError, load_params
from pipeline.models.family import families

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1
# Not the list itself: listing the registered families loads them (and torch), and --help answers at once.
FAMILY_HELP = "a registered model family (the built-ins are those of params.yaml's families)"


def _load(args):
    """The params (which register the families named by import path), and ``--family`` checked
    against the registered families."""
    params = load_params(args.params, args.profile)
    given = getattr(args, "family", None)
    for value in [given] if isinstance(given, str) else given or []:
        if value not in families():
            raise ParamsError(f"--family: unknown family {value!r}; choose from {', '.join(families())}")
    return params


def cmd_prepare(args) -> int:
    from pipeline.data.prepare import prepare, save

    params = _load(args)
    prepared = prepare(params)
    interrupts.defer()  # writing: a signal from here on is raised after, and what was written removed
    data_path, card_path = save(prepared, params.data.dataset)
    card = prepared.card
    print(f"prepared {card['dataset']}: input {card['input_shape']}, {card['num_classes']} classes, "
          f"split {card['num_samples']} -> {data_path} (sha256 {card['sha256'][:12]})")
    return 0


def _meter(params, gpu_ids: list[int] | None = None):
    """Start CodeCarbon's hardware probe now, so it overlaps the heavy imports that follow."""
    from pipeline.energy import EnergyMeter

    return EnergyMeter(params.energy, gpu_ids=gpu_ids).prewarm()


def _train_meter(params):
    """A training command's meter, reading only the GPU this process trains on (``train.devices``,
    checked here: a GPU asked for where there is none fails before anything starts)."""
    from pipeline.compute import resolve_devices

    return _meter(params, resolve_devices(params.train).gpu_ids)


def cmd_train(args) -> int:
    params = _load(args)
    meter = _train_meter(params)
    from pipeline.training.train import train_family

    m = train_family(params, args.family, meter)
    from pipeline.ranks import is_global_zero

    if not is_global_zero():  # a DDP rank: rank 0 reports
        return 0
    energy = f"{m['energy_j']:.1f} J" if "energy_j" in m else "energy unavailable"
    print(f"trained {args.family}: val/acc {m['val_acc']:.4f} (best epoch {m['best_epoch'] + 1}/{m['epochs']}), "
          f"{m['duration_s']:.1f} s, {energy}, {m['params']} params")
    return 0


def cmd_tune(args) -> int:
    params = _load(args)
    meter = _train_meter(params)
    from pipeline.tuning.tune import tune_family

    m = tune_family(params, args.family, meter)
    print(f"tuned {args.family}: {m['trials']} trials ({m['trials_complete']} complete, {m['trials_pruned']} pruned, "
          f"{m['trials_failed']} failed), search {m.get('search_energy_j', float('nan')):.1f} J; chosen trial "
          f"{m['chosen_trial']} refit to val/acc {m['val_acc']:.4f}")
    return 0


def cmd_tune_worker(args) -> int:
    from pipeline.tuning.tune import worker_command

    worker_command(args.job, args.worker)
    return 0


def cmd_evaluate(args) -> int:
    params = _load(args)
    meter = _meter(params)
    from pipeline.evaluation.evaluate import evaluate_family

    m = evaluate_family(params, args.family, args.variant, meter)
    energy = f"{m['energy_per_1k_j']:.3f} J/1k predictions" if "energy_per_1k_j" in m else "energy unavailable"
    print(f"evaluated {args.family} ({args.variant}): test/acc {m['test_acc']:.4f}, macro-F1 {m['test_f1_macro']:.4f}, "
          f"{m['latency_ms_per_sample']:.3f} ms/sample, {energy}")
    return 0


def cmd_compress(args) -> int:
    params = _load(args)
    meter = _meter(params)
    from pipeline.compression.compress import compress_family

    for source in [args.source] if args.source else params.compress.sources:
        m = compress_family(params, args.family, source, meter)
        ref = m["reference"]
        print(f"compressed {args.family} ({source}): {len(m['variants'])} variants, {len(m['skipped'])} skipped; "
              f"source test/acc {ref['test_acc']:.4f}, {ref.get('energy_per_1k_j', float('nan')):.3f} J/1k predictions; "
              f"{m['stage_duration_s']:.1f} s")
    return 0


def cmd_sweep(args) -> int:
    params = _load(args)
    meter = _train_meter(params)
    from pipeline.sweep import sweep_point

    m = sweep_point(params, args.family, args.width, args.depth, meter)
    energy = f"{m['energy_j']:.1f} J" if "energy_j" in m else "energy unavailable"
    print(f"sweep {args.family} width x{args.width} depth x{args.depth} ({m['params']} params): "
          f"test/acc {m['test_acc']:.4f}, training {energy}")
    return 0


def cmd_apply_profile(args) -> int:
    """Merge profiles into the params file, so that ``dvc repro`` (which reads params.yaml) runs
    them; validated first: a bad profile leaves the file as it was."""
    import yaml

    from pipeline.config import apply_profiles

    files = [*args.profile, *args.files]
    merged = apply_profiles(args.params, files)
    what = f"with {', '.join(map(str, files))} merged on top" if files else "completed"
    interrupts.defer()  # writing: a signal from here on is raised after the file is whole
    header = (f"# {args.params} {what} by `python -m pipeline apply-profile`, every default spelt out.\n"
              f"# Every key: docs/params.md. `git checkout {args.params}` brings back the shipped file.\n")
    args.params.write_text(header + yaml.safe_dump(merged, sort_keys=False, default_flow_style=None, width=110))
    print(f"{args.params}: {what} (families: {', '.join(merged['families'])})")
    return 0


def cmd_server(args) -> int:
    import os

    from pipeline.server import DEFAULT_BACKEND, serve

    serve(args.backend_store_uri or os.environ.get("MLFLOW_BACKEND_STORE_URI") or DEFAULT_BACKEND,
          args.artifacts, args.host, args.port, args.workers)
    return 0  # not reached: the process became the server


def cmd_compare(args) -> int:
    """``compare`` and the ``report`` stage (the same code, the same default scope)."""
    from pipeline.reporting.store import gc_paused

    # The command allocates about a million small objects (MLflow's ORM rows, matplotlib
    # artists) and frees them when it ends: the cyclic collector's passes took a quarter of its
    # CPU time over 1,000 runs and reclaimed nothing that matters.
    with gc_paused():
        return _compare(args)


def _compare(args) -> int:
    from pipeline.reporting.compare import Filters, parse_when, resolve_commit
    from pipeline.reporting.report import load, write_outputs

    params = _load(args)
    filters = Filters(
        experiments=args.experiment, all_experiments=args.all_experiments, families=args.family,
        stages=args.stage, commits=[resolve_commit(c) for c in args.commit], dvc_exps=args.dvc_exp,
        since_ms=None if args.since is None else parse_when(args.since),
        until_ms=None if args.until is None else parse_when(args.until),
        top=args.top, all_runs=args.all_runs, mix=args.mix)
    cmp = load(params, filters)
    extra = []
    if args.command == "report":  # the data's card and the compress stage's own details
        from pipeline.compression.summary import compression_section
        from pipeline.reporting.data_section import data_section_text
        from pipeline.reporting.render import Section

        data = data_section_text(params.data.dataset)
        if data:
            extra.append(Section("Data", data))
        text = compression_section(params, args.out)
        if text:
            title, _, body = text.partition("\n")
            extra.append(Section(title.lstrip("# ").strip(), body.strip() + "\n", args.out))
    written = write_outputs(cmp, args.out, extra)
    knee = cmp.knees["train"]
    best = f"; knee (training energy): {cmp.rows[knee]['label']}, test/acc {cmp.rows[knee]['test_acc']:.4f} " \
           f"for {cmp.rows[knee]['train_energy_j']:.1f} J" if knee is not None else ""
    if args.command == "report" and knee is not None and cmp.rows[knee]["model_id"]:
        from pipeline.tracking import register_knee

        version = register_knee(params.tracking, cmp.rows[knee]["model_id"], best.removeprefix("; "))
        best += f" (registered: {params.tracking.experiment_name}-knee version {version})" if version else ""
    print(f"compared {len(cmp.rows)} models ({cmp.runs_read} runs, {len(cmp.groups)} groups){best}")
    print(f"written: {written['html']}, {written['markdown']}, "
          f"{', '.join(str(p) for k, p in written.items() if k not in ('html', 'markdown'))}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__.splitlines()[0])
    p.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (default: params.yaml)")
    p.add_argument("--profile", type=Path, action="append", default=[], metavar="FILE",
                   help="partial params file merged on top (repeatable), e.g. profiles/search-large.yaml")
    sub = p.add_subparsers(dest="command", required=True, metavar="<stage>")
    prep = sub.add_parser("prepare", help="build the dataset, split it, write data/prepared/ and its card")
    prep.set_defaults(func=cmd_prepare)
    for name, func, text in (
        ("train", cmd_train, "train one model family (Lightning), measured and tracked"),
        ("tune", cmd_tune, "Optuna search for one family (every trial measured), then refit the chosen trial"),
        ("evaluate", cmd_evaluate, "evaluate one trained family on the held-out test split"),
    ):
        sp = sub.add_parser(name, help=text)
        sp.add_argument("--family", required=True, help=FAMILY_HELP)
        if name == "evaluate":
            sp.add_argument("--variant", default="baseline", choices=["baseline", "tuned"],
                            help="the train stage's model (baseline) or the search's (tuned)")
        sp.set_defaults(func=func)
    sp = sub.add_parser("tune-worker", help="one more worker of a running search (tune.search.n_workers > 1 "
                        "starts these itself)")
    sp.add_argument("job", type=Path, help="the search's worker file, written by the tune command")
    sp.add_argument("--worker", type=int, required=True, help="this worker's number (1 ..)")
    sp.set_defaults(func=cmd_tune_worker)
    sp = sub.add_parser("compress", help="int8 quantization, pruning and distillation variants of one family's "
                        "trained model(s), each measured like evaluate and tracked")
    sp.add_argument("--family", required=True, help=FAMILY_HELP)
    sp.add_argument("--source", default=None, choices=["baseline", "tuned"],
                    help="the model to compress (default: every one in compress.sources)")
    sp.set_defaults(func=cmd_compress)
    sp = sub.add_parser("sweep", help="one point of a family's model-size sweep: train with width and depth "
                        "multiplied, then test (the sweep stage's matrix runs every point of params.yaml's sweep)")
    sp.add_argument("--family", required=True, help=FAMILY_HELP)
    sp.add_argument("--width", default="1", help="width factor (multiplies the parameter the family names as its "
                    "width), e.g. 0.5 or 2")
    sp.add_argument("--depth", default="1", help="depth factor (multiplies the parameter the family names as its "
                    "depth), e.g. 1 or 2")
    sp.set_defaults(func=cmd_sweep)
    sp = sub.add_parser("apply-profile", help="merge profile files into params.yaml (validated first, every default "
                        "spelt out), so that dvc repro runs them, e.g. profiles/ucr.yaml; with none, complete params.yaml "
                        "(a new family's default search space, which DVC reads from the file)")
    sp.add_argument("files", type=Path, nargs="*", metavar="PROFILE", help="partial params file(s), merged in order")
    sp.set_defaults(func=cmd_apply_profile)
    sp = sub.add_parser("server", help="start the MLflow tracking server that several processes and machines log to: "
                        "PostgreSQL as its store (the database created when missing), artifacts proxied into a folder")
    sp.add_argument("--backend-store-uri", default=None, metavar="URI",
                    help="where runs are kept (default: $MLFLOW_BACKEND_STORE_URI or postgresql://postgres@127.0.0.1:5432/mlflow)")
    sp.add_argument("--artifacts", type=Path, default=Path("mlartifacts"), help="folder the server keeps artifacts in "
                    "(default: mlartifacts)")
    sp.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for other machines)")
    sp.add_argument("--port", type=int, default=5000)
    sp.add_argument("--workers", type=int, default=2, help="server processes (default 2)")
    sp.set_defaults(func=cmd_server)
    for name, text in (
        ("compare", "compare models across families, searches, DVC experiments and commits (reads MLflow, "
                    "never retrains): Pareto fronts, tables, HTML + Markdown report"),
        ("report", "the report stage: compare with the default scope into reports/"),
    ):
        sp = sub.add_parser(name, help=text, description=text + ". Filters of different kinds combine (and); "
                            "repeated values of one kind are alternatives (or).")
        sp.add_argument("--experiment", action="append", default=[], metavar="NAME",
                        help="MLflow experiment to read (repeatable; default: tracking.experiment_name)")
        sp.add_argument("--all-experiments", action="store_true", help="read every MLflow experiment of the store")
        sp.add_argument("--family", action="append", default=[], metavar="F",
                        help="only this model family (repeatable)")
        sp.add_argument("--stage", action="append", default=[], metavar="S",
                        help="only models made by this stage (repeatable): train, tune, sweep, compress")
        sp.add_argument("--commit", action="append", default=[], metavar="SHA",
                        help="only runs at this git commit: a hash prefix or a ref such as HEAD (repeatable)")
        sp.add_argument("--dvc-exp", action="append", default=[], metavar="NAME",
                        help="only runs of this DVC experiment (repeatable; 'workspace': runs outside any)")
        sp.add_argument("--since", metavar="WHEN", help="runs started at or after WHEN: a date (2026-11-20, "
                        "2026-11-20T14:30) or a duration back from now (90m, 12h, 3d, 2w)")
        sp.add_argument("--until", metavar="WHEN", help="runs started at or before WHEN (same forms as --since)")
        sp.add_argument("--top", type=int, metavar="N", help="keep the N most accurate models (N >= 1)")
        sp.add_argument("--all-runs", action="store_true",
                        help="keep every run (default: the latest run per model in each DVC experiment or commit)")
        sp.add_argument("--mix", action="store_true",
                        help="one front over runs measured on different machines, by different energy methods, or "
                             "alone and beside other work (default: each such condition gets its own fronts); the "
                             "methods' bounds then count as noise, and the rows are marked")
        sp.add_argument("--out", type=Path, default=Path("reports"), help="output folder (default: reports)")
        sp.set_defaults(func=cmd_compare)
    return p


def main(argv: list[str] | None = None) -> int:
    import logging

    interrupts.install(forget=False)  # SIGTERM ends runs like Ctrl-C: KILLED in MLflow, exit 130
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    created = [p for p in _outputs(args) if not p.exists()]
    code = EXIT_FAILED
    try:
        code = _run(args)
        return code
    finally:
        from pipeline.ranks import is_global_zero

        if code != 0 and is_global_zero():  # a DDP rank's outputs are rank 0's
            _remove(created)


def _outputs(args) -> list[Path]:
    """What the command writes for DVC (the study storage and MLflow store are not outputs)."""
    from pipeline import paths

    family = getattr(args, "family", None)
    if args.command == "prepare":
        return [paths.PREPARED_DIR]
    if args.command == "train":
        return [paths.model_dir(family), paths.train_metrics(family), paths.epoch_plot(family)]
    if args.command == "tune":
        return [paths.model_dir(family, paths.TUNED), paths.tune_metrics(family), paths.epoch_plot(family, paths.TUNED)]
    if args.command == "compress":
        sources = [args.source] if args.source else [paths.BASELINE, paths.TUNED]
        return [p for source in sources for p in (paths.compressed_dir(family, source), paths.compress_metrics(family, source))]
    if args.command == "evaluate":
        return [paths.evaluate_metrics(family, args.variant), paths.confusion_plot(family, args.variant)]
    return []


def _remove(created: list[Path]) -> None:
    """A failed or interrupted command removes the outputs it created, so no half-written output
    is left (under DVC, whose outputs are removed before a stage runs, that is all of them).
    Outputs that existed before are left as they were: their files are written whole, at the end."""
    for p in created:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif p.exists():
            p.unlink()


def _run(args) -> int:
    try:
        code = args.func(args)
        interrupts.check()  # a signal during the command's last steps: its outputs are not kept
        return code
    except ParamsError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return interrupts.EXIT_INTERRUPTED
    except Exception as err:
        if interrupts.received():
            # Stopping for a signal can surface as another error (a DDP peer that stopped first
            # is gone); the user asked to stop.
            print(f"interrupted ({type(err).__name__} while stopping)", file=sys.stderr)
            return interrupts.EXIT_INTERRUPTED
        from pipeline.data.source import DataError
        from pipeline.errors import FamilyError, SavedModelError, StoreError

        if isinstance(err, (DataError, FamilyError, SavedModelError, StoreError)):
            print(f"error: {err}", file=sys.stderr)
            return EXIT_BAD_INPUT
        from pipeline.errors import NonFiniteLoss, NothingToSelect

        if isinstance(err, (NonFiniteLoss, NothingToSelect)):  # the MLflow run is FAILED with this error as its tag
            print(f"error: {err}", file=sys.stderr)
            return EXIT_FAILED
        raise
