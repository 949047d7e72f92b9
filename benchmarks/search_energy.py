"""Energy a search spends before its first trial reaches a target validation accuracy.

Runs the configured search (``tune.search.sampler`` + ``tune.search.pruner`` from params.yaml)
and Optuna's RandomSampler without pruning on the same family and space, for several seeds.
Every trial is the pipeline's real trial (Lightning + CodeCarbon + MLflow, into a temporary
store); the energy counted is that of all trials up to and including the first one whose
validation accuracy reaches the target, pruned trials included. Prints the mean of each and
their ratio (configured / random; lower is better).

    python benchmarks/search_energy.py [--family cnn] [--target 0.9] [--seeds 3] [--max-trials 12]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import optuna  # noqa: E402

from pipeline.config import load_params  # noqa: E402
from pipeline.data.prepare import prepare  # noqa: E402
from pipeline.energy import J_PER_KWH, EnergyMeter  # noqa: E402
from pipeline.tracking import tracked_run  # noqa: E402
from pipeline.tuning import study as st  # noqa: E402
from pipeline.tuning.objective import Objective  # noqa: E402


def energy_to_target(params, family, prepared, meter, sampler, pruner, target, max_trials) -> tuple[float, int, bool]:
    """(joules spent until the first trial reached ``target``, trials used, reached?)."""
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
    with tracked_run(params.tracking, f"bench-{family}", {"stage": "bench"}) as parent:
        objective = Objective(params, family, prepared, meter, parent.run_id, "bench", echo=lambda m: None)

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
    ap.add_argument("--family", default="cnn")
    ap.add_argument("--target", type=float, default=0.9, help="validation accuracy to reach")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--max-trials", type=int, default=12, help="a study that never reaches the target stops here")
    args = ap.parse_args()

    params = load_params(args.params)
    prepared = prepare(params)
    os.chdir(tempfile.mkdtemp(prefix="search-bench-"))
    for var in ("DVC_ROOT", "MLFLOW_TRACKING_URI"):
        os.environ.pop(var, None)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    meter = EnergyMeter(params.energy).prewarm()
    s = params.tune.search
    print(f"family {args.family}, target val/acc {args.target}, per-trial epochs {s.max_epochs}, "
          f"configured: {s.sampler} + {s.pruner} pruner; baseline: random, no pruning\n")
    results = {"configured": [], "random": []}
    for seed in range(args.seeds):
        p = params.model_copy(update={"base": params.base.model_copy(update={"seed": params.base.seed + seed})})
        for name, sampler, pruner in (
            ("configured", st.make_sampler(p), st.make_pruner(p)),
            ("random", optuna.samplers.RandomSampler(seed=p.base.seed), optuna.pruners.NopPruner()),
        ):
            joules, n, reached = energy_to_target(p, args.family, prepared, meter, sampler, pruner,
                                                  args.target, args.max_trials)
            results[name].append(joules)
            print(f"seed {seed} {name:10} {joules:8.1f} J over {n:2d} trials"
                  f"{'' if reached else '  (target not reached: energy of all trials)'}", flush=True)
    conf, rand = statistics.mean(results["configured"]), statistics.mean(results["random"])
    print(f"\nmean energy to target: configured {conf:.1f} J, random {rand:.1f} J, ratio {conf / rand:.3f}")


if __name__ == "__main__":
    main()
