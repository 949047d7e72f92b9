"""How safe the search's target pruner is, and what it saves, replayed on real learning curves.

Runs ``--trials`` trials per family of a search space (default: the large search profile), each
the pipeline's real trial (Lightning + CodeCarbon + MLflow into a temporary store) with Optuna's
RandomSampler and no pruning, every one to its last epoch, and records each epoch's validation
accuracy and energy (``--save``: JSON lines; ``--curves`` replays saved ones instead of training).
Then, for targets reached by about a half, a quarter and an eighth of the trials (so the figures do
not hang on one chosen accuracy; or ``--target FAMILY=ACC``), it replays two pruning rules on every
trial, epoch by epoch:

- ``reachable`` (the pruner ``target``, ``pipeline.prediction.reachable``): the best accuracy so far
  continued at its mean pace, plus the noise of the accuracies it was measured from;
- ``curve``: the saturating learning curve's expected end plus half its gain to come as one
  standard error: the Pareto pruner's prediction (``pipeline.tuning.guard.predicted_accuracy``).

For each it prints the **lost** trials (trials that reached the target, pruned before they did:
what a pruner must not do) and the energy the failing trials used up to their pruning, against
their whole energy; and, replaying random orders of the trials (``--orders``), the median of the
energy until the first trial reaches the target with the rule, against without it. Energy: the
pipeline's meter (CodeCarbon); a pruned trial costs its epochs up to the pruning plus its fixed
cost outside the epochs (its energy less its epochs'). Writes into a temporary directory.

    python benchmarks/target_pruning.py [--families mlp cnn] [--trials 40] [--save curves.jsonl]
    python benchmarks/target_pruning.py --curves curves.jsonl [--target cnn=0.95]
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning.pytorch as pl  # noqa: E402
import optuna  # noqa: E402

from benchmarks._common import ROOT, quartiles, trial_workspace, with_search  # noqa: E402
from pipeline.config import load_params  # noqa: E402
from pipeline.energy import J_PER_KWH  # noqa: E402
from pipeline.prediction import reachable  # noqa: E402
from pipeline.training.callbacks import EpochRecorder  # noqa: E402
from pipeline.tuning import study as st  # noqa: E402
from pipeline.tuning.guard import predicted_accuracy  # noqa: E402
from pipeline.uncertainty import Z  # noqa: E402

Rule = Callable[[list[float], int, int], bool]  # (accuracies so far, last epoch, validation samples) -> prune?


def by_reachable(target: float) -> Rule:
    def prune(accs, last, n):
        most = reachable(accs, last, n)
        return most is not None and most < target
    return prune


def by_curve(target: float) -> Rule:
    def prune(accs, last, n):
        if len(accs) < 2:  # no curve: the guard predicts nothing from one epoch either
            return False
        final, se = predicted_accuracy(accs, last, n)
        return final + Z * se < target
    return prune


class EpochEnergies(pl.Callback):
    """Keeps each epoch's energy of the trial it runs in (the pipeline's own epoch records)."""

    def __init__(self):
        self.joules: list[float | None] = []

    def on_train_end(self, trainer, module):
        recorder = next(c for c in trainer.callbacks if isinstance(c, EpochRecorder))
        self.joules = [e.energy_j for e in recorder.epochs]


def collect(params, families: list[str], n_trials: int) -> list[dict]:
    from pipeline.tracking import tracked_run
    from pipeline.tuning.objective import Objective

    prepared, meter = trial_workspace(params, "target-pruning-")
    val_samples = int(prepared.card["num_samples"]["val"])
    out = []
    for family in families:
        energies = EpochEnergies()
        study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=params.base.seed),
                                    pruner=optuna.pruners.NopPruner())

        def record(s, t, family=family, energies=energies):
            accs = [t.intermediate_values[k] for k in sorted(t.intermediate_values)]
            if t.state != optuna.trial.TrialState.COMPLETE or len(accs) != len(energies.joules) \
                    or None in energies.joules:
                print(f"{family} trial {t.number}: {t.state.name}, not replayed", flush=True)
                return
            row = {"family": family, "params": t.params, "accs": accs, "epoch_j": energies.joules,
                   "energy_j": t.user_attrs[st.ENERGY_ATTR] * J_PER_KWH, "val_samples": val_samples}
            out.append(row)
            print(f"{family} trial {t.number}: val/acc " + " ".join(f"{a:.2f}" for a in accs)
                  + f", {row['energy_j']:.1f} J", flush=True)

        with tracked_run(params.tracking, f"target-pruning-{family}", {"stage": "bench"}) as parent:
            objective = Objective(params, family, prepared, meter, parent.run_id, "bench", echo=lambda m: None,
                                  callbacks=[energies])
            study.optimize(objective, n_trials=n_trials, callbacks=[record], catch=(Exception,))
    return out


def replay(trial: dict, target: float, rule: Rule | None, last: int) -> tuple[float, bool, int]:
    """(joules, reached the target?, epochs run) of one trial under a rule (None: no pruning);
    a trial that reaches the target stops at that epoch."""
    accs, epoch_j = trial["accs"], trial["epoch_j"]
    fixed = max(trial["energy_j"] - sum(epoch_j), 0.0)
    for t in range(1, len(accs) + 1):
        if accs[t - 1] >= target:
            return fixed + sum(epoch_j[:t]), True, t
        if rule is not None and t < last and rule(accs[:t], last, trial["val_samples"]):
            return fixed + sum(epoch_j[:t]), False, t
    return trial["energy_j"], False, len(accs)


def to_target(order: list[dict], target: float, rule: Rule | None, last: int) -> float:
    total = 0.0
    for trial in order:
        joules, reached, _ = replay(trial, target, rule, last)
        total += joules
        if reached:
            break
    return total


def default_targets(trials: list[dict]) -> list[float]:
    """Accuracies reached by about a half, a quarter and an eighth of the trials."""
    best = sorted((max(t["accs"]) for t in trials), reverse=True)
    return sorted({round(best[max(len(best) // k - 1, 0)], 3) for k in (2, 4, 8)})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--profile", type=Path, action="append",
                    help="partial params merged on top (default: profiles/search-large.yaml)")
    ap.add_argument("--families", nargs="+", default=["mlp", "cnn"])
    ap.add_argument("--trials", type=int, default=40, help="random trials per family")
    ap.add_argument("--save", type=Path, help="write the trials' curves here (JSON lines)")
    ap.add_argument("--curves", type=Path, nargs="+", help="replay these saved curves instead of training")
    ap.add_argument("--target", nargs="+", default=[], help="FAMILY=ACCURACY (default: from the trials)")
    ap.add_argument("--orders", type=int, default=2000, help="random orders of the trials replayed")
    args = ap.parse_args()

    profiles = args.profile if args.profile is not None else [ROOT / "profiles" / "search-large.yaml"]
    params = load_params(args.params, tuple(profiles))
    last = params.tune.search.max_epochs
    if args.curves:
        trials = [json.loads(line) for path in args.curves for line in path.read_text().splitlines() if line.strip()]
    else:
        params = with_search(params, enqueue_baseline=False, pruner="none", energy_budget_kwh=None,
                             objective="accuracy")
        trials = collect(params, args.families, args.trials)
        if args.save:
            args.save.write_text("".join(json.dumps(t) + "\n" for t in trials))
    given: dict[str, list[float]] = {}
    for item in args.target:
        family, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--target: {item!r} is not FAMILY=ACCURACY")
        given.setdefault(family, []).append(float(value))

    rng = random.Random(0)
    print(f"\n{len(trials)} trials replayed, {last} epochs each at most; energy: the pipeline's meter")
    lost_total = {"reachable": 0, "curve": 0}
    reached_total = 0
    for family in sorted({t["family"] for t in trials}):
        pool = [t for t in trials if t["family"] == family]
        for target in given.get(family) or default_targets(pool):
            reached = [t for t in pool if max(t["accs"]) >= target]
            failing = [t for t in pool if max(t["accs"]) < target]
            reached_total += len(reached)
            orders = [rng.sample(pool, len(pool)) for _ in range(args.orders)]
            plain = [to_target(o, target, None, last) for o in orders]
            print(f"{family} target {target:.3f}: reached by {len(reached)} of {len(pool)} trials")
            for name, make in (("reachable", by_reachable), ("curve", by_curve)):
                rule = make(target)
                lost = sum(not replay(t, target, rule, last)[1] for t in reached)
                lost_total[name] += lost
                cut = [replay(t, target, rule, last) for t in failing]
                kept_j = sum(j for j, _, _ in cut)
                whole_j = sum(t["energy_j"] for t in failing) or float("nan")
                ratios = [to_target(o, target, rule, last) / p for o, p in zip(orders, plain, strict=True)]
                q1, med, q3 = quartiles(ratios)
                epochs = statistics.median([e for _, _, e in cut]) if cut else 0
                print(f"  {name:9} lost {lost} of {len(reached)}; failing trials used {kept_j / whole_j:.2f} of "
                      f"their energy (median {epochs:g} epochs); energy to target / without pruning: median "
                      f"{med:.2f} [quartiles {q1:.2f}-{q3:.2f}]")
    print(f"\nlost over every target: reachable {lost_total['reachable']}, curve {lost_total['curve']}, "
          f"of {reached_total} (trial, target) pairs that reached it")


if __name__ == "__main__":
    main()
