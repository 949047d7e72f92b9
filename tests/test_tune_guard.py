"""Saving a search's energy with the trials' predictions: stopping a trial for the budget, not
starting one that cannot finish, pruning on the Pareto front (two objectives) and short of the
target, each on a hand-made study; then real studies whose budget stops a trial and whose target
prunes one."""
from __future__ import annotations

from types import SimpleNamespace

import optuna
import pytest

from pipeline.prediction import Epoch, forecast, reachable
from pipeline.training.callbacks import EpochRecorder
from pipeline.tuning import study as st
from pipeline.tuning.guard import ParetoPruned, StoppedForBudget, TargetPruned, TrialGuard, dominated
from pipeline.tuning.tune import tune_family

from .test_tune import _runs, prepared, tune_params  # noqa: F401  (the fixture, used by name)

J = 1 / 3.6e6  # kWh per joule


def _study(done):
    """An in-memory two-objective study with completed trials (val/acc, joules)."""
    study = optuna.create_study(directions=["maximize", "minimize"])
    for acc, joules in done:
        t = study.ask()
        t.set_user_attr(st.ENERGY_ATTR, joules * J)
        t.set_user_attr("val_samples", 1000)
        study.tell(t, [acc, joules * J])
    return study


def _trainer(accs, first_j=30.0, j=10.0, max_epochs=10, patience=0, target=0.99):
    """A trainer whose epoch recorder has run ``accs`` epochs (no real training)."""
    recorder = EpochRecorder.__new__(EpochRecorder)
    recorder.epochs = [Epoch(first_j if i == 0 else j, 1.0, a) for i, a in enumerate(accs)]
    plan = {"max_epochs": max_epochs, "patience": patience, "target": target, "val_samples": 1000}
    recorder.forecasts = [forecast(recorder.epochs[:k], **plan) for k in range(1, len(accs) + 1)]
    recorder.plan = plan
    return SimpleNamespace(callbacks=[recorder])


def _guard(study, budget_j=None, pareto=True, **kw):
    trial = study.ask()
    return trial, TrialGuard(trial, None if budget_j is None else budget_j * J, pareto=pareto,
                             **{"warmup_epochs": 1, "startup_trials": 1, "val_samples": 1000, **kw})


def test_a_predicted_point_is_dominated_only_beyond_the_noise():
    done = [(0.90, 100 * J, 1000)]
    assert dominated((0.70, 500 * J), (0.01, 10 * J), done)  # worse on both, far beyond the noise
    assert not dominated((0.95, 500 * J), (0.01, 10 * J), done)  # more accurate: on the front
    assert not dominated((0.89, 105 * J), (0.01, 10 * J), done)  # within the noise on both
    assert not dominated((0.70, 500 * J), (0.01, 10 * J), [])  # nothing done yet


def test_a_trial_predicted_to_overrun_the_budget_is_stopped_and_says_so():
    study = _study([(0.8, 300.0)])
    trial, guard = _guard(study, budget_j=400.0, pareto=False)
    # 40 J in 2 s so far (20 W), 8 more epochs of 1 s: 200 J predicted, 100 J left.
    with pytest.raises(StoppedForBudget, match="predicted 200 J after 2 epoch"):
        guard.on_train_epoch_end(_trainer([0.5, 0.6]), None)
    assert trial.user_attrs["stopped_for"] == "budget"
    trial, guard = _guard(study, budget_j=600.0, pareto=False)
    guard.on_train_epoch_end(_trainer([0.5, 0.6]), None)  # 300 J left: it goes on
    assert "stopped_for" not in trial.user_attrs


def test_the_pareto_pruner_prunes_a_trial_whose_predicted_end_is_beaten_by_a_completed_one():
    study = _study([(0.95, 50.0)])
    trial, guard = _guard(study)
    with pytest.raises(ParetoPruned, match="dominated beyond the noise"):
        guard.on_train_epoch_end(_trainer([0.40, 0.45, 0.47]), None)  # heading for ~0.5 at ~120 J
    assert trial.user_attrs["stopped_for"] == "pareto"
    # Heading above the completed trial's accuracy: kept, whatever it costs.
    _, guard = _guard(study)
    guard.on_train_epoch_end(_trainer([0.80, 0.93, 0.96]), None)
    # Within warm-up, or before startup_trials completed trials, nothing is pruned.
    _, guard = _guard(study, warmup_epochs=5)
    guard.on_train_epoch_end(_trainer([0.40, 0.45, 0.47]), None)
    _, guard = _guard(study, startup_trials=2)
    guard.on_train_epoch_end(_trainer([0.40, 0.45, 0.47]), None)
    _, guard = _guard(study, pareto=False)
    guard.on_train_epoch_end(_trainer([0.40, 0.45, 0.47]), None)


def test_the_most_a_run_can_reach_continues_its_pace_with_the_noise_of_its_accuracies():
    # 0.20 -> 0.30 in one epoch, 8 more to go: 0.30 + 8 x 0.10, capped by nothing but the noise.
    assert reachable([0.20, 0.30], 10, 1000) == pytest.approx(1.10, abs=0.35)
    assert reachable([0.20, 0.30], 10, 1000) > 1.10  # the noise only ever adds
    # A flat start says little after two epochs (the pace's noise over 8 epochs), more after five.
    two, five = reachable([0.20, 0.20], 10, 1000), reachable([0.20, 0.20, 0.20, 0.20, 0.20], 10, 1000)
    assert 0.30 < two < 0.60 and 0.20 < five < two
    # The running best: a dip does not lower it; more validation samples, less noise.
    assert reachable([0.30, 0.20], 10, 1000) == reachable([0.30, 0.30], 10, 1000)
    assert reachable([0.20, 0.20], 10, 100_000) < two
    assert reachable([0.5], 10, 1000) is None  # one epoch: no pace yet
    assert reachable([0.5, 0.6], 2, 1000) == pytest.approx(0.6, abs=0.04)  # nothing left: the noise


def test_the_target_pruner_cuts_a_trial_that_cannot_reach_the_target_and_keeps_a_slow_one_that_can():
    study = _study([])
    trial, guard = _guard(study, pareto=False, target=0.9)
    with pytest.raises(TargetPruned, match="short of the target 0.9"):
        guard.on_train_epoch_end(_trainer([0.10, 0.12]), None)  # stuck near chance
    assert trial.user_attrs["stopped_for"] == "target"
    # A steady climb of 0.1 an epoch reaches 0.9 by epoch 10: kept, as is any trial without a target.
    _, guard = _guard(study, pareto=False, target=0.9)
    guard.on_train_epoch_end(_trainer([0.10, 0.20, 0.30]), None)
    _, guard = _guard(study, pareto=False)
    guard.on_train_epoch_end(_trainer([0.10, 0.12]), None)
    # Not within warm-up, not from one epoch; the last epoch is the trial's max_epochs (10 here).
    _, guard = _guard(study, pareto=False, target=0.9, warmup_epochs=3)
    guard.on_train_epoch_end(_trainer([0.10, 0.12]), None)
    _, guard = _guard(study, pareto=False, target=0.9)
    guard.on_train_epoch_end(_trainer([0.10]), None)
    with pytest.raises(TargetPruned):
        _guard(study, pareto=False, target=0.5)[1].on_train_epoch_end(_trainer([0.10, 0.13, 0.16]), None)
    _guard(study, pareto=False, target=0.5)[1].on_train_epoch_end(_trainer([0.10, 0.13, 0.16], max_epochs=30), None)


def test_a_study_whose_every_trial_was_pruned_for_the_target_says_what_to_change(tiny_params):
    from pipeline.errors import NothingToSelect

    params = tiny_params(**{"tune.search.pruner": "target", "tune.search.max_epochs": 8,
                            "train.target_val_acc": 0.9})
    study = optuna.create_study(direction="maximize")
    for stopped_for in ("target", "target", None):
        t = study.ask()
        t.report(0.2, 1)
        if stopped_for:
            t.set_user_attr(st.STOPPED_FOR_ATTR, stopped_for)
        study.tell(t, state=optuna.trial.TrialState.PRUNED if stopped_for else optuna.trial.TrialState.FAIL)
    with pytest.raises(NothingToSelect, match=r"\(3 trials: 1 fail, 2 pruned\); 2 could not reach "
                                              r"train.target_val_acc 0.9 within 8 epochs"):
        st.select_trial(study, params)


def test_no_trial_starts_that_the_cheapest_completed_one_says_cannot_finish():
    budget = st.EnergyBudget(420 * J)
    assert not budget.reached(_study([]))
    assert not budget.reached(_study([(0.8, 100.0), (0.9, 200.0)]))  # 120 J left: the cheapest fits
    assert budget.reached(_study([(0.8, 150.0), (0.9, 200.0)]))  # 70 J left, the cheapest used 150 J
    assert "less than the cheapest completed trial used (150 J)" in budget.why
    assert budget.reached(_study([(0.8, 450.0)])) and "is spent" in budget.why
    assert not st.EnergyBudget(None).reached(_study([(0.8, 1e9)]))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_real_study_stops_the_trial_that_would_overrun_its_budget(prepared, meter):  # noqa: F811
    """The params.yaml trial measured without a budget; then, with a budget of 2.5x its energy, a
    trial at a 32x smaller batch is predicted after its first epoch to overrun what is left and is
    stopped for the budget, its energy counted; no trial starts after it. (32x the steps costs ~6x
    the energy on this tiny data, where an epoch's fixed costs weigh; 8x the steps cost 1.4-2.1x,
    too close to the 1.5x left to decide.)"""
    over = {"tune.search.max_epochs": 4, "tune.search.pruner": "none",
            "tune.space": {"train": {"batch_size": [64, 2]}, "mlp": {"width": [32]}}}
    first = tune_family(tune_params(**over, **{"tune.search.n_trials": 1, "tune.search.energy_budget_kwh": None}),
                        "mlp", meter, prepared)
    params = tune_params(**over, **{"tune.search.n_trials": 4,
                                    "tune.search.energy_budget_kwh": 2.5 * first["search_energy_kwh"]})
    study = optuna.load_study(study_name=st.study_name(params, "mlp", prepared.card["sha256"]),
                              storage=st.storage_url(params))
    study.enqueue_trial({"train.batch_size": 2, "model.width": 32})
    m = tune_family(params, "mlp", meter, prepared)
    assert m["trials_stopped_for_budget"] == 1 and m["trials"] == 2
    stopped = next(t for t in study.get_trials() if t.user_attrs.get("stopped_for") == "budget")
    assert stopped.state == optuna.trial.TrialState.PRUNED and stopped.params["train.batch_size"] == 2
    assert stopped.user_attrs["energy_kwh"] > 0
    assert m["search_energy_kwh"] == pytest.approx(sum(t.user_attrs["energy_kwh"] for t in study.get_trials()))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_real_study_prunes_for_its_target_the_trial_that_cannot_learn(prepared, meter):  # noqa: F811
    """``pruner: target``: a trial at a learning rate that cannot move the model (1e-7) is pruned
    for the target before its last epoch, its energy counted and its MLflow run tagged; the trial
    at a learning rate that learns runs all of its epochs and is the one chosen."""
    params = tune_params(**{"tune.search.max_epochs": 10, "tune.search.pruner": "target",
                            "tune.search.n_trials": 2, "tune.search.energy_budget_kwh": None,
                            "tune.search.warmup_epochs": 1, "tune.search.enqueue_baseline": False,
                            "train.target_val_acc": 0.3,
                            "tune.space": {"train": {"lr": [0.01, 1e-7]}, "mlp": {"width": [32]}}})
    study = optuna.create_study(study_name=st.study_name(params, "mlp", prepared.card["sha256"]),
                                storage=st.storage_url(params), directions=st.directions(params))
    study.enqueue_trial({"train.lr": 1e-7, "model.width": 32})
    study.enqueue_trial({"train.lr": 0.01, "model.width": 32})
    m = tune_family(params, "mlp", meter, prepared)
    assert m["trials_stopped_for_target"] == 1 and m["trials_pruned"] == 1 and m["chosen_trial"] == 1
    stuck, learner = study.get_trials()
    assert stuck.state == optuna.trial.TrialState.PRUNED and stuck.user_attrs["stopped_for"] == "target"
    assert len(stuck.intermediate_values) < 10 and stuck.user_attrs["energy_kwh"] > 0
    assert learner.state == optuna.trial.TrialState.COMPLETE and len(learner.intermediate_values) == 10
    (run,) = _runs(params, f"tags.study = '{study.study_name}' and tags.trial_number = '0'")
    assert run.data.tags["trial_state"] == "PRUNED" and run.data.metrics["energy/total_j"] > 0


def test_asha_keeps_only_the_best_third_at_each_rung_from_the_first_trials_on(tiny_params):
    """``pruner: asha``: at the rung of ``warmup_epochs`` epochs (and 3x, 9x that) a trial goes on
    only if it is within the best third of the trials that reached the rung; the first trial,
    alone at its rung, goes on; between rungs nothing is pruned."""
    params = tiny_params(**{"tune.search.pruner": "asha", "tune.search.warmup_epochs": 2,
                            "tune.search.max_epochs": 20})
    study = optuna.create_study(direction="maximize", pruner=st.make_pruner(params))

    def pruned_at(rung_acc: float, step: int = 2) -> bool:
        t = study.ask()
        t.report(0.0, 1)
        assert not t.should_prune()  # before the first rung
        t.report(rung_acc, step)
        verdict = t.should_prune()
        study.tell(t, state=optuna.trial.TrialState.PRUNED) if verdict else study.tell(t, rung_acc)
        return verdict

    assert not pruned_at(0.5)  # alone at the rung
    assert pruned_at(0.3)  # of two, only the best goes on
    assert not pruned_at(0.9)
    assert pruned_at(0.6)  # 4 at the rung: the best one (0.9) only
    assert not pruned_at(0.95)
