"""Per family: the compressed variant with the lowest inference energy per 1,000 predictions whose
test accuracy is within 1 point of the original, its energy ratio to the original and its
accuracy change. Target: a ratio of at most 0.5 for at least two families.

By default the script compresses the trained models itself, with params.yaml and
``profiles/compress-search.yaml`` merged on top (more pruning levels, longer fine-tuning, students
trained for the teachers' budget), in a temporary workspace: the project's DVC outputs and its
MLflow store are left as they are (the workspace has its own store, removed at the end unless
``--keep``). It needs the trained models (``dvc repro train`` or ``dvc repro``). ``--stage`` uses
the compress stage's own variants instead (``models/<family>/compressed/<source>/``).

Energy is measured again here with the evaluate stage's own protocol (``energy_rounds``: passes
over the test split at the evaluation batch size with ``evaluate.num_threads`` torch threads, the
original and every variant alternating in the same rounds), only longer: ``--seconds`` per model
in ``--rounds`` rounds (default 4 s in 16 rounds, twice the stage's). A variant's energy ratio is
the median of its per-round ratios to the original, printed with their quartiles.
``--from-metrics`` (with ``--stage``) uses the stage's own figures instead.

Beside the energy ratio it prints the ratio of **CPU time** per prediction (this process's own
CPU seconds), paired the same way. Without a hardware counter, CodeCarbon's energy is CPU load x
TDP plus a fixed RAM power times *wall* time, so other processes on a shared machine inflate a
reading whenever they take the CPU away; CPU time is immune to that. Where the two ratios
disagree, the machine was busy: trust neither alone, measure again on a quiet machine.

    python benchmarks/compression_energy.py [--profile FILE ...] [--families cnn,rnn] [--rounds 16 --seconds 4]
    python benchmarks/compression_energy.py --stage [--from-metrics]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline import paths  # noqa: E402
from pipeline.config import load_params  # noqa: E402
from pipeline.evaluation.inference_energy import paired_ratios, ratio_summary  # noqa: E402
from pipeline.models.family import families as registered_families  # noqa: E402

TOLERANCE = 0.01  # one accuracy point
TARGET_RATIO, TARGET_FAMILIES = 0.5, 2


def remeasure(params, family: str, source: str, names: list[str], meter):
    """The original's and each variant's readings (``RoundReadings``), all measured in the same
    rounds with the params' evaluate protocol."""
    from pipeline.compression.artifact import load_variant
    from pipeline.compression.quantize import set_engine
    from pipeline.data.prepare import load_prepared
    from pipeline.evaluation.evaluate import energy_rounds, load_trained
    from pipeline.training.data import split_tensors

    x, _ = split_tensors(load_prepared(params.data.dataset), "test")
    set_engine(params.compress.quantize.engine)
    models = {"original": load_trained(family, source)[0]}
    for name in names:
        models[name] = load_variant(paths.compressed_dir(family, source) / name)[0]
    rounds = energy_rounds(models, x, params.evaluate, meter)
    if rounds["original"].per_1k_j() is None:
        raise SystemExit("energy measurement unavailable on this machine (see the warning above)")
    return rounds


def compress_in_workspace(params, families: list[str], source: str, root: Path, meter) -> Path:
    """Run the compress stage's code for ``families`` in a new temporary directory holding links to
    the prepared data and copies of the trained models, and make it the working directory."""
    missing = [f for f in families if not (root / paths.model_dir(f, source) / "model.pt").is_file()]
    if missing:
        raise SystemExit(f"no trained {source} model for {', '.join(missing)} under {root / paths.MODELS_DIR}: "
                         f"run `dvc repro` (or `python -m pipeline train --family F`) first")
    work = Path(tempfile.mkdtemp(prefix="compress-bench-"))
    (work / paths.PREPARED_DIR).parent.mkdir(parents=True)
    os.symlink(root / paths.PREPARED_DIR, work / paths.PREPARED_DIR)
    for family in families:
        shutil.copytree(root / paths.model_dir(family, source), work / paths.model_dir(family, source))
    os.chdir(work)
    os.environ.pop("DVC_ROOT", None)  # the workspace's own MLflow store, never the project's
    params = params.model_copy(update={"tracking": params.tracking.model_copy(update={"tracking_uri": ""})})
    try:
        _compress_all(params, families, source, meter, work)
    except BaseException:
        os.chdir(root)
        shutil.rmtree(work)
        raise
    return work


def _compress_all(params, families: list[str], source: str, meter, work: Path) -> None:
    from pipeline.compression.compress import compress_family
    from pipeline.data.prepare import load_prepared

    prepared = load_prepared(params.data.dataset)
    print(f"compressing in {work} ({params.compress.techniques}; "
          f"prune {params.compress.prune.kinds} at {params.compress.prune.sparsity}, "
          f"{params.compress.prune.finetune_epochs} fine-tuning epochs; students trained "
          f"{params.compress.distill.epochs} epochs)", flush=True)
    for family in families:
        t0 = time.perf_counter()
        compress_family(params, family, source, meter, prepared)
        print(f"  {family}: compressed in {time.perf_counter() - t0:.0f} s", flush=True)


def compare_variants(params, families: list[str], source: str, args, meter) -> tuple[int, int]:
    """Print each family's variants against its original; return (families meeting the target,
    families with variants)."""
    ev = params.evaluate
    print(f"source model: {source}; within {TOLERANCE * 100:.0f} accuracy point of the original; "
          + ("energy from the compress stage's metrics" if args.from_metrics else
             f"energy re-measured: {ev.energy_min_duration_s:g} s per model in {ev.energy_rounds} alternated rounds, "
             f"{ev.num_threads or 'all'} torch thread(s); ratio = median of the per-round ratios (quartiles)"))
    met = 0
    families_seen = 0
    for family in families:
        path = paths.compress_metrics(family, source)
        if not path.is_file():
            print(f"\n{family}: no {path} (run `python -m pipeline compress --family {family} --source {source}`)")
            continue
        families_seen += 1
        m = json.loads(path.read_text())
        ref, variants = m["reference"], m["variants"]
        cpu_ratio: dict[str, float] = {}
        quartiles: dict[str, tuple[float, float]] = {}
        if args.from_metrics:
            e_ref = ref.get("energy_per_1k_j")
            energy = {k: v.get("energy_per_1k_j") for k, v in variants.items()}
            ratios = {k: v.get("energy_ratio") for k, v in variants.items()}
            quartiles = {k: (v["energy_ratio_q1"], v["energy_ratio_q3"]) for k, v in variants.items()
                         if "energy_ratio_q1" in v}
            spread = ref.get("energy_per_1k_j_spread")
        else:
            rounds = remeasure(params, family, source, list(variants), meter)
            orig = rounds["original"]
            e_ref = orig.total.energy_j / orig.n_pred * 1000
            energy = {k: rounds[k].total.energy_j / rounds[k].n_pred * 1000 for k in variants}
            ratios = {}
            for k in variants:
                summary = ratio_summary(paired_ratios(rounds[k].per_1k_j(), orig.per_1k_j()))
                ratios[k] = summary.get("energy_ratio")
                if "energy_ratio_q1" in summary:
                    quartiles[k] = (summary["energy_ratio_q1"], summary["energy_ratio_q3"])
                cpu = paired_ratios(rounds[k].cpu_s_per_1k(), orig.cpu_s_per_1k())
                if cpu:
                    cpu_ratio[k] = statistics.median(cpu)
            spread = orig.spread()
        print(f"\n{family} ({source}): original test/acc {ref['test_acc']:.4f}, {e_ref:.4f} J/1k predictions"
              + (f" (spread of its readings {spread:.0%})" if spread is not None else ""))
        rows = []
        for name, v in variants.items():
            if energy.get(name) is None or ratios.get(name) is None:
                continue
            ratio = ratios[name]
            ok = v["acc_delta"] >= -TOLERANCE - 1e-12
            rows.append((name, v["acc_delta"], energy[name], ratio, ok))
            cpu_txt = f"  CPU-time ratio {cpu_ratio[name]:5.2f}" if name in cpu_ratio else ""
            q = f" ({quartiles[name][0]:.2f}-{quartiles[name][1]:.2f})" if name in quartiles else ""
            print(f"  {name:34s} acc {v['test_acc']:.4f} ({v['acc_delta'] * 100:+5.1f} pts)  "
                  f"{energy[name]:.4f} J/1k  energy ratio {ratio:5.2f}{q}{cpu_txt}"
                  f"{'' if ok else '   (outside 1 point)'}")
        eligible = [r for r in rows if r[4]]
        if not eligible:
            print(f"  -> no variant within {TOLERANCE * 100:.0f} point of the original")
            continue
        best = min(eligible, key=lambda r: r[3])  # paired ratio: the lowest energy, drift cancelled
        hit = best[3] <= TARGET_RATIO
        met += hit
        cpu_txt = f" (CPU-time ratio {cpu_ratio[best[0]]:.2f})" if best[0] in cpu_ratio else ""
        print(f"  -> best within 1 point: {best[0]}: energy ratio {best[3]:.2f}{cpu_txt}, accuracy change "
              f"{best[1] * 100:+.1f} points {'(meets <= 0.5)' if hit else '(above 0.5)'}")
    return met, families_seen


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--profile", type=Path, action="append",
                    help="partial params merged on top before compressing (default: profiles/compress-search.yaml)")
    ap.add_argument("--stage", action="store_true",
                    help="measure the compress stage's variants (models/*/compressed), compress nothing")
    ap.add_argument("--families", default=None, help="comma-separated (default: params.yaml's families)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary workspace (models, MLflow store)")
    ap.add_argument("--source", default=None, choices=["baseline", "tuned"],
                    help="which compressed model (default: the first of compress.sources)")
    ap.add_argument("--rounds", type=int, default=16, help="alternated energy readings per model (default 16)")
    ap.add_argument("--seconds", type=float, default=4.0, help="measured seconds per model, all rounds (default 4)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads while predicting (default: evaluate.num_threads; 0: torch's own choice)")
    ap.add_argument("--from-metrics", action="store_true",
                    help="with --stage: use the compress stage's figures, measure nothing")
    args = ap.parse_args(argv)
    if args.from_metrics and not args.stage:
        ap.error("--from-metrics reads the compress stage's metrics: add --stage")
    if args.stage and args.profile:
        ap.error("--profile sets up a new compression; --stage measures the stage's own variants")
    root = Path.cwd().resolve()
    profiles = tuple(args.profile or ([] if args.stage else [ROOT / "profiles" / "compress-search.yaml"]))
    params = load_params(args.params, profiles)
    source = args.source or params.compress.sources[0]
    families = args.families.split(",") if args.families else list(params.families)
    unknown = sorted(set(families) - set(registered_families()))
    if unknown:
        ap.error(f"--families: unknown {', '.join(unknown)} (known: {', '.join(registered_families())})")
    if args.rounds < 1 or args.seconds <= 0 or (args.threads is not None and args.threads < 0):
        ap.error("--rounds must be >= 1, --seconds > 0 and --threads >= 0")
    evaluate = {"energy_rounds": args.rounds, "energy_min_duration_s": args.seconds}
    if args.threads is not None:
        evaluate["num_threads"] = args.threads
    params = params.model_copy(update={"evaluate": params.evaluate.model_copy(update=evaluate)})
    meter = None
    if not args.from_metrics:
        from pipeline.energy import EnergyMeter

        meter = EnergyMeter(params.energy).prewarm()
    work = None
    if not args.stage:
        work = compress_in_workspace(params, families, source, root, meter)

    try:
        met, families_seen = compare_variants(params, families, source, args, meter)
    finally:
        if work is not None:
            os.chdir(root)
            if args.keep:
                print(f"\nworkspace kept: {work}")
            else:
                shutil.rmtree(work)
    verdict = "MET" if met >= TARGET_FAMILIES else "NOT MET"
    print(f"\ntarget (energy ratio <= {TARGET_RATIO} within 1 accuracy point, for >= {TARGET_FAMILIES} families): "
          f"{verdict} ({met} of {families_seen} families)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
