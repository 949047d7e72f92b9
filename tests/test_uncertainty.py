"""What an energy figure is worth: method bounds, repeats, the noise-aware front and its ties,
the fingerprint that keeps runs of different conditions apart (``compare --mix`` joins them),
and the train stage's repeats."""
from __future__ import annotations

import json
import math
import random

import pytest

from pipeline import fingerprint
from pipeline.energy import EnergyReading
from pipeline.pareto import noisy_front, pareto_front, ties
from pipeline.reporting.compare import Filters, compare
from pipeline.reporting.store import RunRecord
from pipeline.uncertainty import Spread, Z, beyond, binomial_se, bounds_j, factors, pooled_cv

ESTIMATE = "cpu=estimate:cpu_load*tdp;ram=estimate;gpu=none"
RAPL = "cpu=rapl;ram=estimate;gpu=none"


# ---------------------------------------------------------------- method bounds and spreads

def test_method_bounds_are_per_component_and_a_sum_takes_the_wider():
    assert factors(ESTIMATE) == {"cpu": 2.0, "ram": 2.0, "gpu": 1.0}
    assert factors(f"{RAPL}+{ESTIMATE}")["cpu"] == 2.0
    assert factors("cpu=something_new;ram=estimate;gpu=none")["cpu"] == 3.0  # unknown: the widest
    low, high = bounds_j(RAPL, 100.0, 10.0, 0.0)
    assert low == pytest.approx(100 / 1.1 + 10 / 2) and high == pytest.approx(110 + 20)
    assert bounds_j("unavailable", 1.0, 1.0, 0.0) is None and bounds_j(RAPL, None, 1.0, 0.0) is None


def test_a_reading_logs_its_bounds_and_the_work_beside_it():
    r = EnergyReading(duration_s=10.0, energy_kwh=3e-5, cpu_kwh=2e-5, gpu_kwh=0.0, ram_kwh=1e-5, method=ESTIMATE,
                      own_cpu_s=10.0, others_cpu_s=5.0, cores=2)
    m = r.metrics()
    assert m["energy/total_j"] == pytest.approx(108.0)
    assert m["energy/total_j_low"] == pytest.approx(54.0) and m["energy/total_j_high"] == pytest.approx(216.0)
    assert m["energy/others_cores"] == pytest.approx(0.5) and m["energy/cores"] == 2
    assert fingerprint.beside(m) == "shared"
    assert fingerprint.beside({**m, "energy/others_cores": 0.1}) == "alone"
    # 12 ms with half a core busy elsewhere (6 ms of CPU: a daemon's tick) is no contention
    assert fingerprint.beside({**m, "energy/duration_s": 0.012}) == "alone"
    assert fingerprint.beside({**m, "energy/duration_s": 0.3}) == "shared"
    assert fingerprint.beside({}) == "unknown"
    # Two ranks of one run, each seeing the other beside it: the run itself had nothing beside it.
    a = EnergyReading(duration_s=10.0, own_cpu_s=9.0, others_cpu_s=9.5, cores=2)
    b = EnergyReading(duration_s=9.0, own_cpu_s=9.0, others_cpu_s=9.2, cores=2)
    both = EnergyReading.concurrent([a, b])
    assert both.others_cpu_s == pytest.approx(0.2) and both.duration_s == 10.0


def test_spread_gives_students_interval_and_cv():
    s = Spread.of([10.0, 12.0, 14.0])
    assert (s.n, s.mean, s.sd) == (3, 12.0, 2.0)
    assert s.ci95 == pytest.approx(4.302653 * 2 / math.sqrt(3), rel=1e-5)  # t(0.975, 2 dof)
    assert s.cv == pytest.approx(2 / 12)
    one = Spread.of([5.0])
    assert one.ci95 is None and one.cv is None and one.sem is None
    assert Spread.of([None, float("nan")]) is None
    cv, k = pooled_cv([Spread.of([10.0, 12.0, 14.0]), Spread.of([100.0, 100.0]), one])
    assert k == 2 and cv == pytest.approx(math.sqrt((2 * (2 / 12) ** 2 + 0) / 3))
    assert pooled_cv([one]) is None


def test_binomial_error_and_beyond_the_noise():
    assert binomial_se(0.9, 100) == pytest.approx(0.03)
    assert binomial_se(None, 100) is None and binomial_se(0.5, 0) is None
    assert beyond(1.0, 0.0, None, None)  # exact figures differ when they differ
    assert not beyond(1.0, 0.0, 0.4, 0.4)  # 1.0 < 1.96 * 0.57
    assert beyond(1.0, 0.0, 0.3, 0.3)  # 1.0 > 1.96 * 0.42


# ---------------------------------------------------------------- the noise-aware front

def test_a_point_dominated_only_within_the_noise_stays_on_the_front():
    pts = [(0.90, 100.0), (0.89, 104.0), (0.80, 300.0)]
    assert pareto_front(pts) == [0]
    noise = [(0.01, 5.0)] * 3
    # 0.89 at 104 J is within the noise of 0.90 at 100 J on both axes: kept, and a tie.
    assert noisy_front(pts, noise) == [0, 1]
    assert ties(pts, [0, 1], noise) == {0: [1], 1: [0]}
    # 0.80 at 300 J is worse beyond the noise on both: dominated whatever the noise.
    assert 2 not in noisy_front(pts, noise)
    # Beyond the noise on one axis is enough: 200 J against 100 J at a tie in accuracy.
    assert noisy_front([(0.90, 100.0), (0.895, 200.0)], [(0.01, 5.0)] * 2) == [0]
    assert noisy_front(pts, None) == pareto_front(pts) and ties(pts, [0], None) == {}


def test_noisy_front_matches_its_quadratic_definition_and_contains_the_exact_front():
    rng = random.Random(7)
    for _ in range(150):
        n = rng.randint(1, 12)
        pts = [(rng.choice([0.5, 0.6, 0.7, 0.8]), rng.choice([1.0, 2.0, 3.0, 5.0])) for _ in range(n)]
        noise = [(rng.choice([0.0, 0.04, 0.1]), rng.choice([0.0, 0.5, 2.0])) for _ in range(n)]

        def dominates(d, p, pts=pts, noise=noise):
            (qd, cd), (qp, cp) = pts[d], pts[p]
            weakly = qd >= qp and cd <= cp and (qd > qp or cd < cp)
            return weakly and (qd - qp > Z * math.hypot(noise[d][0], noise[p][0])
                               or cp - cd > Z * math.hypot(noise[d][1], noise[p][1]))

        brute = {p for p in range(n) if not any(dominates(d, p) for d in range(n))}
        front = noisy_front(pts, noise)
        assert set(front) == brute and set(pareto_front(pts)) <= set(front)


# ---------------------------------------------------------------- compare: conditions and repeats

T0 = 1_764_000_000_000


def _rec(i, family, j, acc, host="hostA", method=ESTIMATE, others=0.0, key="", stage="train", test=True, **tags):
    t = {"stage": stage, "family": family, "variant": "baseline", "energy_method": method, "git_commit": "a" * 40,
         "host_id": host, "host_cpu": f"CPU of {host}", "host_cores": "2", "host_gpu": "none",
         **({"config_key": key} if key else {}), **tags}
    m = {"energy/total_j": j, "energy/total_j_low": j / 2, "energy/total_j_high": j * 2,
         "energy/others_cores": others, "energy/cores": 2.0}
    if test:
        m.update({"test/acc": acc, "test/samples": 1000.0, "test/energy_per_1k_j": j / 100})
    return RunRecord(f"r{i}", "energy-pipeline", f"{stage}-{family}", "FINISHED", T0 + i, t, m)


def _cmp(records, **filters):
    return compare(records, Filters(**filters), ["energy-pipeline"], "sqlite:///x")


def test_runs_of_other_hosts_or_beside_other_work_get_their_own_fronts():
    records = [
        _rec(0, "mlp", 58.0, 0.80),                          # alone on host A
        _rec(1, "cnn", 90.0, 0.85),                          # alone on host A
        _rec(2, "rnn", 650.0, 0.84, others=1.0),             # beside another experiment: shared
        _rec(3, "transformer", 40.0, 0.70, host="hostB"),    # another machine
    ]
    cmp = _cmp(records)
    rows = {r["family"]: r for r in cmp.rows}
    assert len(cmp.conditions) == 3 and len(cmp.conditions[0].rows) == 2  # the largest condition first
    assert {r["condition_id"] for r in cmp.rows} == {"C1", "C2", "C3"}
    # Each condition has its own front and knee: the shared run is on its own, not beaten by 58 J.
    assert all(r["front_train"] for r in cmp.rows)
    assert sum(bool(r["knee_train"]) for r in cmp.rows) == 3
    assert "shared" in cmp.conditions[[c.key[2] for c in cmp.conditions].index("shared")].label

    from pipeline.reporting.render import columns, conditions_note, markdown
    note = conditions_note(cmp)
    assert "3 conditions, which are not comparable" in note and "`--mix`" in note
    assert ("condition_id", "measured", "{}") in columns(cmp)
    assert "Against training energy (J) (C2)" in markdown(cmp, [])

    mixed = _cmp(records, mix=True)
    assert len(mixed.conditions) == 3 and "--mix` puts them on one front" in conditions_note(mixed)
    mixed_rows = {r["family"]: r for r in mixed.rows}
    # One front: the transformer (40 J) and the mlp (58 J) are within the methods' bounds of each
    # other in energy, but the rnn at 650 J is beyond them against the cnn at 90 J.
    assert not mixed_rows["rnn"]["front_train"]
    assert sum(bool(r["knee_train"]) for r in mixed.rows) == 1
    assert rows["rnn"]["noise_train"][1] is None and mixed_rows["rnn"]["noise_train"][1] > 0


def test_repeats_of_a_configuration_are_averaged_and_their_spread_is_the_noise_of_the_rest():
    records = [
        _rec(0, "mlp", 100.0, 0.80, key="k-mlp"),
        _rec(1, "mlp", 110.0, 0.80, key="k-mlp", test=False, repeat="1"),
        _rec(2, "mlp", 120.0, 0.80, key="k-mlp", test=False, repeat="2"),
        _rec(3, "mlp", 500.0, 0.80, key="k-mlp", test=False, others=1.5),  # shared: not a repeat of these
        _rec(4, "cnn", 200.0, 0.90, key="k-cnn"),
    ]
    cmp = _cmp(records)
    rows = {r["family"]: r for r in cmp.rows}
    mlp, cnn = rows["mlp"], rows["cnn"]
    assert mlp["train_energy_n"] == 3 and mlp["train_energy_j"] == pytest.approx(110.0)
    assert mlp["train_energy_ci95_j"] == pytest.approx(4.302653 * 10 / math.sqrt(3), rel=1e-5)
    assert mlp["noise_train"][1] == pytest.approx(10 / math.sqrt(3))
    # The cnn ran once: its noise is the pooled CV of the repeated configurations (10/110).
    assert cmp.conditions[0].noise_cv == (pytest.approx(10 / 110), 1)
    assert cnn["train_energy_n"] == 1 and cnn["noise_train"][1] == pytest.approx(200 * 10 / 110)
    assert mlp["test_acc_se"] == pytest.approx(math.sqrt(0.8 * 0.2 / 1000))

    from pipeline.reporting.render import _cells, noise_note
    text = noise_note(cmp)
    assert "9.1% from 1 configuration" in text
    assert "0.8000 \u00b1 0.0248" in _cells(mlp)  # accuracy: 1.96 binomial errors on 1000 samples
    cell = next(c for c in _cells(mlp) if c.startswith("110.0"))
    assert cell.startswith("110.0 \u00b1 ") and cell.endswith("(n=3)")
    # Nothing repeated: the noise is said to be unmeasured, and energies compare exactly.
    single = noise_note(_cmp([_rec(0, "mlp", 100.0, 0.8), _rec(1, "cnn", 200.0, 0.9)]))
    assert "no configuration was run more than once" in single


def test_models_within_the_noise_are_named_as_ties_of_the_knee():
    records = [_rec(0, "mlp", 100.0, 0.800, key="k1"), _rec(1, "mlp", 102.0, 0.800, key="k1", test=False),
               _rec(2, "cnn", 101.0, 0.805, key="k2"), _rec(3, "rnn", 1000.0, 0.95)]
    cmp = _cmp(records)
    rows = {r["family"]: r for r in cmp.rows}
    knee = next(r for r in cmp.rows if r["knee_train"])
    assert knee["ties_train"], "the knee has a model within the noise of it"
    assert {knee["family"], *[lbl.split("-")[0] for lbl in knee["ties_train"]]} == {"mlp", "cnn"}
    assert rows["rnn"]["front_train"] and not rows["rnn"]["ties_train"]

    from pipeline.reporting.render import markdown
    assert "so not ranked against it" in markdown(cmp, [])


# ---------------------------------------------------------------- the fingerprint of a run

def test_fingerprint_names_the_machine_method_libraries_and_threads():
    tags = fingerprint.fingerprint({"cpu_model": "Some CPU", "gpu_count": 0, "ram_total_size": 24.0}, RAPL, "codecarbon")
    assert tags["host_cpu"] == "Some CPU" and tags["host_gpu"] == "none" and tags["host_ram_gb"] == "24"
    assert tags["energy_method"] == RAPL and tags["energy_backend"] == "codecarbon"
    assert "torch " in tags["libraries"] and "codecarbon " in tags["libraries"] and int(tags["torch_threads"]) >= 1
    assert tags["launch"] == "own process"
    other = fingerprint.fingerprint({"cpu_model": "Other CPU", "gpu_count": 0, "ram_total_size": 24.0}, RAPL, "codecarbon")
    assert len(tags["host_id"]) == 10 and other["host_id"] != tags["host_id"]
    assert fingerprint.host({"cpu_model": "Some CPU", "gpu_count": 0, "ram_total_size": 24.0})["host_id"] == tags["host_id"]


# ---------------------------------------------------------------- the train stage's repeats

def test_train_repeats_log_each_seed_and_report_mean_and_interval(tiny_params, workdir, meter):
    from pipeline import paths
    from pipeline.data.prepare import prepare, save
    from pipeline.tracking import client_for
    from pipeline.training.train import train_family

    prepared = prepare(tiny_params())
    save(prepared, "mnist1d")
    params = tiny_params(**{"base.repeats": 3, "train.threads": 1})
    metrics = train_family(params, "mlp", meter, prepared)
    rep = metrics["repeats"]
    assert rep["n"] == 3 and rep["seeds"] == [params.base.seed + i for i in range(3)]
    assert rep["energy_j"]["n"] == 3 and rep["energy_j"]["ci95"] > 0 and rep["energy_j"]["cv"] >= 0
    assert 0 < rep["val_acc"]["mean"] <= 1
    assert json.loads(paths.train_metrics("mlp").read_text())["repeats"]["n"] == 3

    client, _ = client_for(params.tracking)
    exp = client.get_experiment_by_name(params.tracking.experiment_name)
    runs = client.search_runs([exp.experiment_id], "tags.stage = 'train'")
    assert len(runs) == 3 and all(r.info.status == "FINISHED" for r in runs)
    keys = {r.data.tags["config_key"] for r in runs}
    assert len(keys) == 1
    parent = next(r for r in runs if "repeat" not in r.data.tags)
    children = [r for r in runs if "repeat" in r.data.tags]
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    assert parent.data.metrics["repeats/n"] == 3
    assert parent.data.metrics["repeats/energy_j_mean"] == pytest.approx(rep["energy_j"]["mean"])
    for r in runs:  # every run measured and fingerprinted
        assert r.data.metrics["energy/total_j_low"] < r.data.metrics["energy/total_j"] < r.data.metrics["energy/total_j_high"]
        assert r.data.tags["host_id"] and r.data.tags["libraries"] and "energy/others_cores" in r.data.metrics
    # The kept model is the first seed's: the same as a single training of that seed.
    single = train_family(tiny_params(**{"train.threads": 1}), "mlp", meter, prepared)
    assert single["val_acc"] == metrics["val_acc"]
