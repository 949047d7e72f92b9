"""Predicting a run's total energy, time and energy to target from its epochs so far."""
from __future__ import annotations

import pytest

from pipeline.prediction import Curve, Epoch, error_pct, errors, forecast, linear_rule, stopping_epoch


def _epochs(accs, first_j=30.0, j=10.0, s=1.0):
    return [Epoch(first_j if i == 0 else j, 3 * s if i == 0 else s, a) for i, a in enumerate(accs)]


def test_the_curve_goes_through_two_epochs_and_fits_a_power_law_to_more():
    c = Curve.fit([0.5, 0.7])
    assert c(1) == pytest.approx(0.5) and c(2) == pytest.approx(0.7) and c.c == 1.0
    truth = Curve(0.9, 0.4, 0.7)
    fitted = Curve.fit([truth(t) for t in range(1, 8)])
    assert fitted.c == 0.7 and fitted.a == pytest.approx(0.9) and fitted.b == pytest.approx(0.4)
    # The running best is fitted: a dip is what early stopping and the target never see.
    assert Curve.fit([0.5, 0.7, 0.6]) == Curve.fit([0.5, 0.7, 0.7])
    assert Curve.fit([0.5]) is None and Curve.fit([0.6, 0.6]).b == 0.0


def test_without_early_stopping_the_run_takes_max_epochs_at_the_fastest_epochs_cost():
    f = forecast(_epochs([0.5, 0.6]), max_epochs=10, patience=0, target=0.99, val_samples=100)
    assert f.epochs == 10
    # 40 J in 4 s so far (10 W), then 8 epochs of the fastest epoch's 1 s at 10 W.
    assert f.total_j == pytest.approx(40 + 8 * 10) and f.total_s == pytest.approx(4 + 8 * 1)
    # An epoch's joules depend on where the meter's samples fell: the rate comes from the whole run.
    uneven = [Epoch(20.0, 2.0, 0.5), Epoch(5.0, 1.0, 0.6), Epoch(15.0, 1.0, 0.6)]
    assert forecast(uneven, max_epochs=5, patience=0, target=0.99, val_samples=100).total_j == pytest.approx(60.0)
    # After one epoch there is nothing but the first to extrapolate: the linear rule's figure.
    one = forecast(_epochs([0.5]), max_epochs=10, patience=0, target=0.99, val_samples=100)
    assert one.total_j == pytest.approx(300.0) == linear_rule(_epochs([0.5]), 10)


def test_early_stopping_is_predicted_where_the_gain_drops_below_the_noise_plus_patience():
    curve = Curve(0.9, 0.4, 1.0)  # gain of epoch t: 0.4 / (t (t - 1))
    noise = 0.01  # gains drop below it after epoch 6 (0.4/30 = 0.013; epoch 7: 0.0095)
    # From epoch 12 on, the curve gains less than the noise over 5 epochs: 2 / (12 * 17) < 0.01.
    assert stopping_epoch(curve, 3, 100, 5, noise) == 12 + 5
    assert stopping_epoch(curve, 3, 8, 5, noise) == 8  # max_epochs bounds it
    assert stopping_epoch(curve, 3, 100, 0, noise) == 100  # no early stopping
    assert stopping_epoch(None, 1, 100, 5, noise) == 100  # no curve yet
    # Flat already: it stops patience epochs after the last best so far, and not before now.
    assert stopping_epoch(Curve(0.9, 0.0, 1.0), 4, 100, 3, noise, last_best=2) == 5
    assert stopping_epoch(Curve(0.9, 0.0, 1.0), 4, 100, 3, noise) == 7
    assert stopping_epoch(Curve(0.9, 0.0, 1.0), 9, 100, 3, noise, last_best=2) == 9

    accs = [curve(t) for t in range(1, 5)]
    val_samples = round(accs[-1] * (1 - accs[-1]) / noise ** 2)  # the binomial error of the best so far: 0.01
    f = forecast(_epochs(accs), max_epochs=100, patience=5, target=0.99, val_samples=val_samples)
    # 60 J in 6 s so far; 13 epochs to go of 1 s at 10 W.
    assert f.epochs == 17 and f.total_j == pytest.approx(60 + 13 * 10)
    # Three epochs do not pin a curve's shape down: the run is taken to use max_epochs.
    assert forecast(_epochs(accs[:3]), max_epochs=100, patience=5, target=0.99, val_samples=val_samples).epochs == 100


def test_energy_to_target_is_measured_once_reached_and_extrapolated_before():
    curve = Curve(0.9, 0.4, 1.0)  # 0.5, 0.7, 0.767, 0.8 (epoch 4), ...
    accs = [curve(t) for t in range(1, 4)]
    f = forecast(_epochs(accs), max_epochs=30, patience=0, target=0.79, val_samples=1000)
    assert f.to_target_epochs == 4 and f.to_target_j == pytest.approx(50 + 10)
    reached = forecast(_epochs([0.5, 0.85, 0.7]), max_epochs=30, patience=0, target=0.8, val_samples=1000)
    assert reached.to_target_epochs == 2 and reached.to_target_j == pytest.approx(40)
    never = forecast(_epochs(accs), max_epochs=30, patience=0, target=0.95, val_samples=1000)
    assert never.to_target_j is None and "energy/predicted_to_target_j" not in never.metrics()
    late = forecast(_epochs(accs), max_epochs=3, patience=0, target=0.79, val_samples=1000)
    assert late.to_target_j is None  # the curve gets there, but after the run's last epoch


def test_unmeasured_energy_predicts_time_only_and_errors_are_signed_percentages():
    eps = [Epoch(None, 2.0, 0.5), Epoch(None, 1.0, 0.6)]
    f = forecast(eps, max_epochs=4, patience=0, target=0.9, val_samples=100)
    assert f.total_j is None and f.total_s == pytest.approx(3 + 2 * 1) and "energy/predicted_total_j" not in f.metrics()
    assert error_pct(110.0, 100.0) == pytest.approx(10.0) and error_pct(90.0, 100.0) == pytest.approx(-10.0)
    assert error_pct(None, 100.0) is None and error_pct(1.0, 0.0) is None
    rows = errors([forecast(_epochs([0.5, 0.6]), max_epochs=3, patience=0, target=0.99, val_samples=100)],
                  total_j=50.0, total_s=5.0, to_target_j=None)
    assert rows == [{"energy/predicted_total_error_pct": pytest.approx(0.0),
                     "time/predicted_total_error_pct": pytest.approx(0.0)}]
