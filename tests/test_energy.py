import time

import torch

from pipeline.config import EnergyCfg
from pipeline.energy import UNAVAILABLE, EnergyMeter


def test_real_work_has_positive_energy_and_a_method(meter):
    with meter.measure() as m:
        a = torch.randn(600, 600)
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 1.5:
            a = (a @ a).clamp_(-1, 1)
    r = m.total
    assert r.energy_kwh > 0 and r.cpu_kwh > 0 and r.emissions_kg > 0
    assert r.duration_s >= 1.5
    assert r.energy_j == r.energy_kwh * 3.6e6
    assert r.method != UNAVAILABLE and r.method.startswith("cpu=")
    # This machine has no RAPL: the CPU figure must say it is an estimate, not claim a counter.
    assert r.cpu_method in {"rapl", "estimate:cpu_load*tdp", "estimate:constant_tdp"}


def test_sleep_costs_near_zero_cpu_energy(meter):
    with meter.measure() as busy:
        t0 = time.perf_counter()
        a = torch.randn(400, 400)
        while time.perf_counter() - t0 < 1.0:
            a = (a @ a).clamp_(-1, 1)
    with meter.measure() as idle:
        time.sleep(1.0)
    assert idle.total.cpu_kwh < 0.1 * busy.total.cpu_kwh


def test_laps_add_up_to_the_total(meter):
    with meter.measure() as m:
        for _ in range(3):
            time.sleep(0.2)
            m.lap()
    assert len(m.segments) == 4  # three laps and the tail
    assert abs(sum(s.energy_kwh for s in m.segments) - m.total.energy_kwh) < 1e-15
    assert abs(sum(s.duration_s for s in m.segments) - m.total.duration_s) < 1e-9


def test_failed_measurement_is_marked_unavailable(monkeypatch):
    import codecarbon

    class Broken:
        def __init__(self, *a, **k):
            raise RuntimeError("no sensors")

    monkeypatch.setattr(codecarbon, "OfflineEmissionsTracker", Broken)
    meter = EnergyMeter(EnergyCfg())
    with meter.measure() as m:
        time.sleep(0.05)
    r = m.total
    assert r.method == UNAVAILABLE and r.energy_kwh is None and r.energy_j is None
    assert r.duration_s >= 0.05
    assert "energy/total_j" not in r.metrics() and "energy/duration_s" in r.metrics()
