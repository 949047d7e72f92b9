"""The one Pareto front and knee (pipeline/pareto.py) on hand-made points, and the search's
choice of trial (``select_trial``) made with that same knee."""
from __future__ import annotations

import math

import optuna
import pytest

from pipeline.pareto import knee, pareto_front
from pipeline.tuning import study as st

# ---------------------------------------------------------------- the front

def test_front_keeps_only_non_dominated_points_sorted_by_cost():
    pts = [(0.90, 100.0), (0.80, 50.0), (0.85, 120.0), (0.95, 400.0), (0.70, 60.0)]
    # (0.85, 120) is dominated by (0.90, 100); (0.70, 60) by (0.80, 50).
    assert pareto_front(pts) == [1, 0, 3]


def test_equal_energies_keep_only_the_most_accurate():
    pts = [(0.80, 100.0), (0.90, 100.0), (0.85, 100.0), (0.95, 200.0)]
    assert pareto_front(pts) == [1, 3]


def test_equal_accuracies_keep_only_the_cheapest():
    pts = [(0.90, 300.0), (0.90, 100.0), (0.90, 200.0), (0.80, 50.0)]
    assert pareto_front(pts) == [3, 1]


def test_exact_duplicates_are_all_on_or_all_off_the_front():
    on = [(0.9, 100.0), (0.9, 100.0), (0.8, 50.0)]
    assert pareto_front(on) == [2, 0, 1]
    off = [(0.8, 100.0), (0.8, 100.0), (0.9, 100.0)]
    assert pareto_front(off) == [2]
    dominated_by_cheaper_equal = [(0.9, 50.0), (0.9, 100.0), (0.9, 100.0)]
    assert pareto_front(dominated_by_cheaper_equal) == [0]


def test_missing_or_not_finite_values_take_no_part():
    pts = [(0.9, None), (None, 10.0), (0.8, float("nan")), (0.7, float("inf")), (0.6, 20.0)]
    assert pareto_front(pts) == [4]
    assert pareto_front([]) == [] and knee([]) is None


def test_front_matches_the_quadratic_definition_on_random_points():
    import random

    rng = random.Random(3)
    for _ in range(200):
        pts = [(rng.choice([0.5, 0.6, 0.7, 0.8]), rng.choice([1.0, 2.0, 3.0, 5.0])) for _ in range(rng.randint(1, 12))]
        brute = {i for i, (q, c) in enumerate(pts)
                 if not any(q2 >= q and c2 <= c and (q2 > q or c2 < c) for q2, c2 in pts)}
        assert set(pareto_front(pts)) == brute


def test_knee_is_nearest_the_ideal_on_log_energy_with_ties_to_the_cheaper():
    # Front: 10 J at 0.80, 100 J at 0.95, 1000 J at 0.96. Log-scaled energy puts 100 J halfway;
    # accuracy scaled: 0, 0.9375, 1 -> the 100 J point is nearest (0.5^2 + 0.0625^2).
    pts = [(0.80, 10.0), (0.95, 100.0), (0.96, 1000.0)]
    assert knee(pts) == 1
    # Two points only: both corners are equally far from the ideal -> the cheaper one.
    assert knee([(0.9, 100.0), (0.8, 10.0)]) == 1
    # A single point is its own knee; dominated points are never the knee.
    assert knee([(0.9, 5.0), (0.5, 50.0)]) == 0


def test_knee_picks_the_balanced_point():
    # accuracy, energy: the middle point is nearest to (best accuracy, least energy)
    assert knee([(0.5, 1.0), (0.9, 2.0), (0.92, 10.0)]) == 1
    assert knee([(0.8, 1.0)]) == 0


def _linear_knee(points):
    """What the search's own knee did before it shared this one: cost scaled linearly."""
    qs, cs = [p[0] for p in points], [p[1] for p in points]

    def dist(i):
        dq = 1 - (qs[i] - min(qs)) / (max(qs) - min(qs))
        dc = (cs[i] - min(cs)) / (max(cs) - min(cs))
        return dq * dq + dc * dc

    return min(range(len(points)), key=dist)


# Costs over four orders of magnitude: on a linear scale 1, 10 and 100 J are all ~0, so the knee
# would be the most accurate of them (100 J); on the log scale 10 J saves a factor of 10 for
# 0.05 of accuracy and is nearest the ideal: (1 - 0.8)^2 + 0.25^2 against (1 - 0.9)^2 + 0.5^2.
SPREAD = [(0.5, 1.0), (0.9, 10.0), (0.95, 100.0), (1.0, 10_000.0)]


def test_knee_scales_cost_by_its_logarithm():
    assert pareto_front(SPREAD) == [0, 1, 2, 3]
    assert knee(SPREAD) == 1
    assert _linear_knee(SPREAD) == 2  # the scaling makes the difference


def test_knee_falls_back_to_a_linear_cost_scale_when_a_cost_is_not_positive():
    # log10(0) is undefined: costs 0, 1, 3 scale linearly to 0, 1/3, 1; accuracy to 0, 0.8, 1.
    pts = [(0.5, 0.0), (0.9, 1.0), (1.0, 3.0)]
    assert knee(pts) == 1 == _linear_knee(pts)
    pts = [(0.0, 0.0), (0.9, 5.0), (0.95, 6.0), (1.0, 1000.0)]
    assert knee(pts) == _linear_knee(pts) == 2


def test_knee_uses_a_given_front_and_ignores_points_off_it():
    pts = [(0.9, 5.0), (0.95, 50.0), (0.5, 20.0), (None, 1.0), (0.99, math.nan)]
    front = pareto_front(pts)
    assert front == [0, 1]
    assert knee(pts, front) == knee(pts) == 0  # two corners equally far: the cheaper


# ---------------------------------------------------------------- the search's choice uses the same knee

def _study(points: list[tuple[float, float]]) -> optuna.Study:
    """An in-memory two-objective study whose completed trials have these (val/acc, kWh) values,
    plus a failed trial (never part of the front)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["maximize", "minimize"])
    for acc, kwh in points:
        study.add_trial(optuna.trial.create_trial(values=[acc, kwh], params={}, distributions={}))
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, params={}, distributions={}))
    return study


# val/acc, kWh: SPREAD's four front points among dominated ones and an exact duplicate of one.
TRIALS = [(0.85, 50.0), (0.5, 1.0), (0.9, 10.0), (0.9, 10.0), (0.7, 200.0), (0.95, 100.0), (1.0, 10_000.0),
          (0.9, 20.0)]


def test_select_trial_picks_the_knee_of_the_shared_front(tiny_params):
    study = _study(TRIALS)
    chosen, front = st.select_trial(study, tiny_params(**{"tune.search.objective": "accuracy+energy"}))
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    points = [tuple(t.values) for t in complete]
    assert [t.number for t in front] == [complete[i].number for i in pareto_front(points)]
    assert {t.number for t in front} == {t.number for t in study.best_trials}  # Optuna's front agrees
    assert chosen.number == complete[knee(points)].number
    assert tuple(chosen.values) == (0.9, 10.0)  # not (0.95, 100), the linear scale's choice


def test_select_trial_by_accuracy_takes_the_front_s_most_accurate(tiny_params):
    study = _study(TRIALS)
    params = tiny_params(**{"tune.search.objective": "accuracy+energy", "tune.search.select": "accuracy"})
    chosen, front = st.select_trial(study, params)
    assert tuple(chosen.values) == (1.0, 10_000.0) and len(front) == 5


def test_select_trial_single_objective_is_the_best_trial(tiny_params):
    study = optuna.create_study(direction="maximize")
    for acc in (0.5, 0.9, 0.7):
        study.add_trial(optuna.trial.create_trial(value=acc, params={}, distributions={}))
    chosen, front = st.select_trial(study, tiny_params())
    assert chosen.value == 0.9 and front == [chosen]


def test_select_trial_without_completed_trials_says_so(tiny_params):
    study = _study([])
    with pytest.raises(RuntimeError, match="no trial completed"):
        st.select_trial(study, tiny_params())
