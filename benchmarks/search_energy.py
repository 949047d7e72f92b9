"""Energy a search spends before its first trial reaches a target validation accuracy.

Arms on the same family, space and seed, rotated: each configured search (``tune.search``, or each
``--arm``'s changes to it; with its energy budget and, for accuracy+energy, the Pareto pruner),
started cold -- no trial at the params.yaml point (``enqueue_baseline`` off), so nothing is known
before the search -- and Optuna's RandomSampler without pruning. Params are params.yaml with
``--profile`` merged on top (default: the large search profile, the space a real search covers).
Every trial is the pipeline's real trial (Lightning + CodeCarbon + MLflow, into a temporary store).
Energy counted: every trial up to the moment the first one reaches the target (that trial stops at
the end of the epoch where it got there, in every arm), pruned trials included; a study that never
reaches it within ``--max-trials`` counts all its trials. Prints each run, the median energy of each
arm per family, and the median of the per-pair ratios (configured / random; lower is better) with
their quartiles and range.

    python benchmarks/search_energy.py [--target cnn=0.95 mlp=0.5] [--seeds 5] [--max-trials 20]
        [--arm pruner=asha,startup_trials=2 ...]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning.pytorch as pl  # noqa: E402
import optuna  # noqa: E402

from benchmarks._common import quartiles, summary, trial_workspace, with_search  # noqa: E402
from pipeline.config import load_params  # noqa: E402
from pipeline.energy import J_PER_KWH  # noqa: E402
from pipeline.tracking import tracked_run  # noqa: E402
from pipeline.tuning import study as st  # noqa: E402
from pipeline.tuning.objective import Objective  # noqa: E402


class StopAtTarget(pl.Callback):
    """Ends a trial at the end of the epoch where val/acc first reaches the target."""

    def __init__(self, target: float):
        self.target = target

    def on_validation_epoch_end(self, trainer, module):
        acc = trainer.callback_metrics.get("val/acc")
        if acc is not None and float(acc) >= self.target:
            trainer.should_stop = True


def energy_to_target(params, family, prepared, meter, sampler, pruner, target,
                     max_trials) -> tuple[float, int, bool]:
    """(joules spent until the first trial reached ``target``, trials used, reached?)."""
    study = optuna.create_study(directions=st.directions(params), sampler=sampler, pruner=pruner)
    with tracked_run(params.tracking, f"bench-{family}", {"stage": "bench"}) as parent:
        objective = Objective(params, family, prepared, meter, parent.run_id, "bench", echo=lambda m: None,
                              callbacks=[StopAtTarget(target)])

        def stop_at_target(s, t):
            if _reached(t, target):
                s.stop()

        study.optimize(objective, n_trials=max_trials, callbacks=[stop_at_target], catch=(Exception,))
    joules = sum(t.user_attrs.get(st.ENERGY_ATTR, 0.0) for t in study.trials) * J_PER_KWH
    return joules, len(study.trials), any(_reached(t, target) for t in study.trials)


def _reached(trial: optuna.trial.FrozenTrial, target: float) -> bool:
    """Its val/acc (the first objective), or a pruned trial's best epoch, reached the target."""
    accs = [*(trial.values[:1] if trial.values else []), *trial.intermediate_values.values()]
    return max(accs, default=0.0) >= target


def _targets(items: list[str]) -> dict[str, float]:
    out = {}
    for item in items:
        family, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--target: {item!r} is not FAMILY=ACCURACY")
        out[family] = float(value)
    return out


def _arm(spec: str) -> tuple[str, dict]:
    """``key=value,...`` over ``tune.search`` (e.g. ``pruner=asha,startup_trials=2``): a name and changes."""
    changes = {}
    for item in spec.split(","):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--arm: {item!r} is not KEY=VALUE (keys of tune.search, e.g. pruner=asha)")
        changes[key.strip()] = value.strip()
    return spec, changes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=Path, default=Path(__file__).resolve().parents[1] / "params.yaml")
    ap.add_argument("--profile", type=Path, action="append",
                    help="partial params merged on top (default: profiles/search-large.yaml)")
    ap.add_argument("--target", nargs="+", default=["cnn=0.95", "mlp=0.5"],
                    help="FAMILY=ACCURACY: the validation accuracy each family's search must reach")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--max-trials", type=int, default=20, help="a study that never reaches the target stops here")
    ap.add_argument("--arm", action="append", type=_arm,
                    help="a search to compare with random: KEY=VALUE,... over tune.search (e.g. "
                         "pruner=asha,startup_trials=2; repeat for more; default: the params' own)")
    args = ap.parse_args()
    targets = _targets(args.target)

    root = Path(__file__).resolve().parents[1]
    profiles = args.profile if args.profile is not None else [root / "profiles" / "search-large.yaml"]
    params = with_search(load_params(args.params, tuple(profiles)), enqueue_baseline=False)
    s = params.tune.search
    configured = dict(args.arm or [_arm(f"objective={s.objective},sampler={s.sampler},pruner={s.pruner}")])
    for name, changes in configured.items():  # a bad arm fails before any trial
        try:
            with_search(params, **changes)
        except ValueError as err:
            raise SystemExit(f"--arm {name}: {err}") from None
    prepared, meter = trial_workspace(params, "search-bench-")
    print(f"targets {targets}, per-trial epochs {s.max_epochs}, profiles {[str(p) for p in profiles]}; "
          f"energy: the pipeline's meter (CodeCarbon; each trial's method in its MLflow run)\n"
          f"searches (from {s.objective}, {s.sampler} sampler, {s.pruner} pruner, startup "
          f"{s.startup_trials} trials, warm-up {s.warmup_epochs} epochs), cold start: {'; '.join(configured)}; "
          f"against: random sampler, no pruning\n", flush=True)
    arms = [*configured, "random"]
    joules: dict[tuple[str, str], list[float]] = {}
    ratios: dict[str, list[float]] = {a: [] for a in configured}
    late: dict[str, list[float]] = {a: [] for a in configured}  # pairs where random needed more than the startup trials
    for family, target in targets.items():
        for seed in range(args.seeds):
            # The target is the one the study is told (train.target_val_acc: the pruner `target` cuts
            # trials that cannot reach it) and the one every arm is measured against.
            p = params.model_copy(update={"base": params.base.model_copy(update={"seed": params.base.seed + seed}),
                                          "train": params.train.model_copy(update={"target_val_acc": target})})
            got, used = {}, {}
            for name in arms[seed % len(arms):] + arms[:seed % len(arms)]:  # rotated: no arm always first
                if name == "random":
                    sampler, pruner = optuna.samplers.RandomSampler(seed=p.base.seed), optuna.pruners.NopPruner()
                    arm = with_search(p, objective="accuracy", pruner="none", energy_budget_kwh=None)  # nor the guard's stops
                else:
                    arm = with_search(p, **configured[name])
                    sampler, pruner = st.make_sampler(arm), st.make_pruner(arm)
                j, n, reached = energy_to_target(arm, family, prepared, meter, sampler, pruner, target, args.max_trials)
                got[name], used[name] = j, n
                joules.setdefault((family, name), []).append(j)
                print(f"{family} seed {seed} {name:30} {j:8.1f} J over {n:2d} trials"
                      f"{'' if reached else '  (target not reached: energy of all trials)'}", flush=True)
            for name in configured:
                ratios[name].append(got[name] / got["random"])
                if used["random"] > s.startup_trials:
                    late[name].append(ratios[name][-1])
            print(f"{family} seed {seed} ratios to random: "
                  + ", ".join(f"{name} {r[-1]:.3f}" for name, r in ratios.items()), flush=True)
    print("\nmedian energy to target [range]:")
    for family in targets:
        print(f"  {family}: " + ", ".join(f"{a} {summary(joules[(family, a)], 'J')}" for a in arms))
    for name, r in ratios.items():
        q1, median, q3 = quartiles(r)
        print(f"ratio {name} / random over {len(r)} pairs: median {median:.3f}, "
              f"quartiles {q1:.3f}-{q3:.3f}, range {min(r):.3f}-{max(r):.3f} (goal: median <= 0.5)")
        # TPE's first startup_trials points are a random sampler's with the study's seed, the random
        # arm's own: where random got there within them, a search can only save what it prunes.
        if late[name]:
            q1, median, q3 = quartiles(late[name])
            print(f"  of which the {len(late[name])} pairs where random needed more than the {s.startup_trials} "
                  f"startup trials: median {median:.3f}, quartiles {q1:.3f}-{q3:.3f}")
        else:
            print(f"  random needed no more than the {s.startup_trials} startup trials in every pair")


if __name__ == "__main__":
    main()
