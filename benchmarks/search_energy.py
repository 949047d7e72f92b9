"""Energy a search spends before its first trial reaches a target validation accuracy.

Runs the configured search (``tune.search.sampler`` + ``tune.search.pruner``, and the study's
first trial at the params.yaml configuration when ``tune.search.enqueue_baseline`` is on) and
Optuna's RandomSampler without pruning on the same family and space, for several seeds; the
configured search without the enqueued baseline is run too, so the share of each is visible.
Params are params.yaml with ``--profile`` merged on top (default: the large search profile, the
space a real search covers). Every trial is the pipeline's real trial (Lightning + CodeCarbon +
MLflow, into a temporary store). Energy counted: every trial up to the moment the first one
reaches the target validation accuracy (that trial stops at the end of the epoch where it got
there, in every arm), pruned trials included. Prints the mean of each arm and the ratios
(configured / random; lower is better).

    python benchmarks/search_energy.py [--family cnn] [--target 0.95] [--seeds 5] [--max-trials 20]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning.pytorch as pl  # noqa: E402
import optuna  # noqa: E402

from pipeline.config import load_params  # noqa: E402
from pipeline.data.prepare import prepare  # noqa: E402
from pipeline.energy import J_PER_KWH, EnergyMeter  # noqa: E402
from pipeline.tracking import tracked_run  # noqa: E402
from pipeline.tuning import study as st  # noqa: E402
from pipeline.tuning.objective import Objective  # noqa: E402
from pipeline.tuning.space import baseline_point  # noqa: E402


class StopAtTarget(pl.Callback):
    """Ends a trial at the end of the epoch where val/acc first reaches the target."""

    def __init__(self, target: float):
        self.target = target

    def on_validation_epoch_end(self, trainer, module):
        acc = trainer.callback_metrics.get("val/acc")
        if acc is not None and float(acc) >= self.target:
            trainer.should_stop = True


def energy_to_target(params, family, prepared, meter, sampler, pruner, target, max_trials,
                     warm_start: bool) -> tuple[float, int, bool]:
    """(joules spent until the first trial reached ``target``, trials used, reached?)."""
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
    if warm_start and baseline_point(params, family):
        study.enqueue_trial(baseline_point(params, family))
    with tracked_run(params.tracking, f"bench-{family}", {"stage": "bench"}) as parent:
        objective = Objective(params, family, prepared, meter, parent.run_id, "bench", echo=lambda m: None,
                              callbacks=[StopAtTarget(target)])

        def stop_at_target(s, t):
            if t.value is not None and t.value >= target:
                s.stop()
            # a pruned trial's best intermediate value counts too: it reached the target before being stopped
            if t.intermediate_values and max(t.intermediate_values.values()) >= target:
                s.stop()

        study.optimize(objective, n_trials=max_trials, callbacks=[stop_at_target], catch=(Exception,))
    joules = sum(t.user_attrs.get(st.ENERGY_ATTR, 0.0) for t in study.trials) * J_PER_KWH
    reached = any((t.value or 0) >= target or (t.intermediate_values and max(t.intermediate_values.values()) >= target)
                  for t in study.trials)
    return joules, len(study.trials), reached


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=Path, default=Path(__file__).resolve().parents[1] / "params.yaml")
    ap.add_argument("--profile", type=Path, action="append",
                    help="partial params merged on top (default: profiles/search-large.yaml)")
    ap.add_argument("--family", default="cnn")
    ap.add_argument("--target", type=float, default=0.95, help="validation accuracy to reach")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--max-trials", type=int, default=20, help="a study that never reaches the target stops here")
    args = ap.parse_args()

    root = Path(__file__).resolve().parents[1]
    profiles = args.profile if args.profile is not None else [root / "profiles" / "search-large.yaml"]
    params = load_params(args.params, tuple(profiles))
    prepared = prepare(params)
    os.chdir(tempfile.mkdtemp(prefix="search-bench-"))
    for var in ("DVC_ROOT", "MLFLOW_TRACKING_URI"):
        os.environ.pop(var, None)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    meter = EnergyMeter(params.energy).prewarm()
    s = params.tune.search
    print(f"family {args.family}, target val/acc {args.target}, per-trial epochs {s.max_epochs}, "
          f"profiles {[str(p) for p in profiles]}\nconfigured: {s.sampler} + {s.pruner} pruner "
          f"(startup {s.startup_trials}, warm-up {s.warmup_epochs} epochs), first trial = params.yaml "
          f"point {baseline_point(params, args.family)}; baseline: random, no pruning\n")
    arms = ["configured", "configured, no warm start", "random"]
    results: dict[str, list[float]] = {a: [] for a in arms}
    for seed in range(args.seeds):
        p = params.model_copy(update={"base": params.base.model_copy(update={"seed": params.base.seed + seed})})
        for name in arms:
            if name == "random":
                sampler, pruner = optuna.samplers.RandomSampler(seed=p.base.seed), optuna.pruners.NopPruner()
            else:
                sampler, pruner = st.make_sampler(p), st.make_pruner(p)
            warm_start = name == "configured" and s.enqueue_baseline
            joules, n, reached = energy_to_target(p, args.family, prepared, meter, sampler, pruner,
                                                  args.target, args.max_trials, warm_start=warm_start)
            results[name].append(joules)
            print(f"seed {seed} {name:26} {joules:8.1f} J over {n:2d} trials"
                  f"{'' if reached else '  (target not reached: energy of all trials)'}", flush=True)
    means = {a: statistics.mean(v) for a, v in results.items()}
    print("\nmean energy to target: " + ", ".join(f"{a} {m:.1f} J" for a, m in means.items()))
    for a in arms[:2]:
        print(f"ratio {a} / random: {means[a] / means['random']:.3f} (target <= 0.33)")


if __name__ == "__main__":
    main()
