"""The inference-energy protocol: pinned threads, interleaved rounds, ratios paired by round."""
from itertools import pairwise

import pytest
import torch
from torch import nn

from pipeline.config import EnergyCfg
from pipeline.energy import EnergyMeter, EnergyReading
from pipeline.evaluation.inference_energy import (
    RoundReadings,
    allocator_setting,
    inference_threads,
    measure_rounds,
    paired_ratios,
    ratio_summary,
    steady_allocator,
)


def test_inference_threads_sets_and_restores_torch_threads():
    before = torch.get_num_threads()
    target = 1 if before != 1 else 2
    with inference_threads(target):
        assert torch.get_num_threads() == target
    assert torch.get_num_threads() == before
    with inference_threads(0):  # 0: torch's own setting, untouched
        assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError):
        with inference_threads(target):
            raise RuntimeError("boom")
    assert torch.get_num_threads() == before


class Recorder(nn.Module):
    """A model that notes each forward call's name, to see the order models were measured in."""

    def __init__(self, name: str, log: list[str]):
        super().__init__()
        self.name, self.log, self.lin = name, log, nn.Linear(4, 3)

    def forward(self, x):
        self.log.append(self.name)
        return self.lin(x)


def test_models_alternate_within_rounds_and_each_reading_is_whole_passes():
    log: list[str] = []
    models = {k: Recorder(k, log) for k in ("a", "b", "c")}
    x = torch.randn(10, 4)
    meter = EnergyMeter(EnergyCfg(country_iso_code="USA"))
    rounds = measure_rounds(models, x, batch_size=4, min_duration_s=0.06, rounds=3, meter=meter)

    # Round 1 a b c, round 2 c b a, round 3 a b c: the model closing a round opens the next, so the
    # runs of consecutive calls by one model read a b c b a b c.
    runs = [log[0]] + [n for prev, n in pairwise(log) if n != prev]
    assert runs == ["a", "b", "c", "b", "a", "b", "c"]
    for name, r in rounds.items():
        assert len(r.readings) == len(r.predictions) == len(r.cpu_s) == 3
        assert all(n >= len(x) and n % len(x) == 0 for n in r.predictions)  # whole passes only
        # forward calls = 3 batches per pass, over the measured passes and one warm-up pass per round
        assert log.count(name) == 3 * (r.n_pred // len(x) + 3)
        assert all(reading.duration_s >= 0.02 for reading in r.readings)
        assert r.total.duration_s == pytest.approx(sum(reading.duration_s for reading in r.readings))


def _rounds(joules: list[float], n: int = 1000) -> RoundReadings:
    readings = tuple(EnergyReading(duration_s=1.0, energy_kwh=j / 3.6e6, emissions_kg=0.0, method="m") for j in joules)
    return RoundReadings(readings, tuple(n for _ in joules), tuple(1.0 for _ in joules))


def test_paired_ratios_cancel_drift_that_hits_both_models():
    # The machine runs 3x slower in round 2: a pooled ratio would still be 0.5 here, but the
    # per-round ratios are exactly 0.5 in every round, so the quartiles are tight.
    ref = _rounds([2.0, 6.0, 2.0, 2.0])
    var = _rounds([1.0, 3.0, 1.0, 1.0])
    assert paired_ratios(var.per_1k_j(), ref.per_1k_j()) == pytest.approx([0.5] * 4)
    s = ratio_summary(paired_ratios(var.per_1k_j(), ref.per_1k_j()))
    assert s["energy_ratio"] == pytest.approx(0.5)
    assert s["energy_ratio_q1"] == pytest.approx(0.5) and s["energy_ratio_q3"] == pytest.approx(0.5)
    # One slow round for the variant alone moves its median little and shows in the quartiles.
    var = _rounds([1.0, 9.0, 1.0, 1.0])
    s = ratio_summary(paired_ratios(var.per_1k_j(), ref.per_1k_j()))
    assert s["energy_ratio"] == pytest.approx(0.5)
    assert s["energy_ratio_q3"] > s["energy_ratio"]
    assert ref.spread() == pytest.approx(0.5)  # sorted 2 2 2 6: quartiles 2 and 3 around a median of 2


def test_ratios_are_absent_when_energy_was_not_measured():
    unmeasured = RoundReadings((EnergyReading(duration_s=1.0),), (100,), (1.0,))
    assert unmeasured.per_1k_j() is None and unmeasured.spread() is None
    assert paired_ratios(unmeasured.per_1k_j(), _rounds([1.0]).per_1k_j()) is None
    assert ratio_summary(None) == {}
    assert ratio_summary([0.7]) == {"energy_ratio": 0.7}


def test_steady_allocator_fixes_glibc_thresholds_once():
    import ctypes
    import ctypes.util

    assert steady_allocator() == "glibc-steady" == allocator_setting()
    assert steady_allocator() == "glibc-steady"  # idempotent
    # A freed 40 MB buffer stays in the heap: allocating it again faults no new pages. (glibc's
    # default maps and unmaps anything above 32 MB every time: ~10,000 page faults per use.)
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    import resource

    def faults_for_buffer() -> int:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        ptr = libc.malloc(40 << 20)
        ctypes.memset(ptr, 1, 40 << 20)
        libc.free(ptr)
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    faults_for_buffer()
    assert faults_for_buffer() < 100
