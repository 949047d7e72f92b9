import time

import pytest
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


def test_the_probe_thread_leaves_the_main_threads_warning_filters_alone(monkeypatch):
    """The meter probes the hardware on a thread of its own while the command goes on. A filter
    the command sets meanwhile stays set, and its warnings are not all silenced meanwhile (the probe
    once held ``warnings.catch_warnings`` open, which is process-wide: the compress stage's
    filters were lost so, and torch's deprecation warnings came through)."""
    import threading
    import warnings

    import codecarbon

    probing, release = threading.Event(), threading.Event()

    class Slow:  # a probe that takes its time, as CodeCarbon's first one does (1.3-2 s)
        def __init__(self, *a, **k):
            probing.set()
            release.wait(10)
            raise RuntimeError("no sensors")

    monkeypatch.setattr(codecarbon, "OfflineEmissionsTracker", Slow)
    monkeypatch.setattr(warnings, "filters", list(warnings.filters))  # restored after the test
    before = list(warnings.filters)
    meter = EnergyMeter(EnergyCfg()).prewarm()
    assert probing.wait(10)
    # none but filters of one module's warnings (the meter's for CodeCarbon's, set before the probe)
    assert all(f[3] is not None for f in warnings.filters if f not in before), warnings.filters[:3]
    warnings.filterwarnings("ignore", message="set while the meter probes")
    release.set()
    meter.tags()  # waits for the probe to end
    assert any(f[1] is not None and f[1].pattern == "set while the meter probes" for f in warnings.filters)


def test_readings_add_up_per_gpu_and_name_their_backend():
    from pipeline.energy import EnergyReading

    a = EnergyReading(duration_s=1.0, energy_kwh=1e-6, gpu_kwh=1e-6, method="m", gpu_j_by_device={0: 2.0})
    b = EnergyReading(duration_s=2.0, energy_kwh=2e-6, gpu_kwh=2e-6, method="m", gpu_j_by_device={1: 3.0})
    both = EnergyReading.concurrent([a, b, a])  # three DDP ranks, two of them on GPU 0
    assert both.gpu_j_by_device == {0: 4.0, 1: 3.0} and both.duration_s == 2.0
    assert both.metrics()["energy/gpu0_j"] == 4.0 and both.metrics()["energy/gpu1_j"] == 3.0
    assert (a + EnergyReading(duration_s=1.0)).gpu_j_by_device is None  # one part unknown: no per-GPU figure
    assert both.backend == "codecarbon" and "gpu0_j" not in str(EnergyReading(duration_s=1.0).metrics())


def test_zeus_backend_where_torch_sees_no_gpu_is_an_error_naming_the_key(workdir, capsys):
    import yaml

    from pipeline import cli

    from .conftest import tiny_raw

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    (workdir / "params.yaml").write_text(yaml.safe_dump(tiny_raw(**{"energy.backend": "zeus"})))
    before = sorted(workdir.rglob("*"))
    assert cli.main(["train", "--family", "mlp"]) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "energy.backend: zeus measures NVIDIA GPUs" in err and "codecarbon" in err
    assert sorted(workdir.rglob("*")) == before


def test_zeus_backend_takes_the_gpus_from_zeus_and_the_rest_from_codecarbon(monkeypatch):
    """The Zeus backend's plumbing with the real Zeus on this GPU-less machine (torch's GPU check
    let through): Zeus monitors no GPU and reports 0 J for them, CPU and RAM come from CodeCarbon,
    the emissions follow CodeCarbon's carbon intensity, and the reading says who measured what."""
    cc = EnergyMeter(EnergyCfg())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    zeus = EnergyMeter(EnergyCfg(backend="zeus"))
    readings = {}
    for name, meter in (("cc", cc), ("zeus", zeus)):
        with meter.measure() as m:
            a = torch.randn(300, 300)
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < 0.5:
                a = (a @ a).clamp_(-1, 1)
        readings[name] = m.total
    r, ref = readings["zeus"], readings["cc"]
    assert r.backend == "zeus" and r.method.endswith(";gpu=zeus:nvml_counter") and r.method.startswith("cpu=")
    assert r.gpu_kwh == 0 and r.gpu_j_by_device == {}
    assert r.cpu_kwh > 0 and r.energy_kwh == r.cpu_kwh + r.ram_kwh
    assert r.emissions_kg / r.energy_kwh == pytest.approx(ref.emissions_kg / ref.energy_kwh, rel=1e-6)
    assert ref.backend == "codecarbon" and ref.method.endswith(";gpu=none")
