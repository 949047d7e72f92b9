"""``compare`` / the report stage over a small hand-made MLflow store (no training); the Pareto
rules on hand-made points are in test_pareto.py."""
from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.reporting.compare import FilterError, Filters, parse_when, resolve_commit

from .conftest import ROOT, shared_warm

DAY_MS = 86_400_000
T0 = 1_780_000_000_000  # 2026-05-28, a fixed origin for the runs' start times
COMMIT_A, COMMIT_B = "a" * 8 + "1" * 32, "b" * 8 + "2" * 32
METHOD = "cpu=estimate:cpu_load*tdp;ram=estimate;gpu=none"


# ---------------------------------------------------------------- a small store, no training

def _run(client, exp_id, name, start, tags, metrics, status="FINISHED"):
    from mlflow.entities import Metric

    r = client.create_run(exp_id, run_name=name, start_time=start, tags={k: str(v) for k, v in tags.items()})
    client.log_batch(r.info.run_id, metrics=[Metric(k, float(v), start, 0) for k, v in metrics.items()])
    client.set_terminated(r.info.run_id, status, end_time=start + 1000)
    return r.info.run_id


def _trained(energy_j, acc, params, **extra):
    return {"energy/total_j": energy_j, "energy/emissions_kg": energy_j * 1e-7, "energy/duration_s": energy_j / 18,
            "model/params_total": params, "model/flops_per_sample_inference": params * 20,
            "final/flops_per_joule": 4e8, "final/train_flops_total": 4e8 * energy_j, "val/acc_best": acc + 0.01,
            "test/acc": acc, "test/f1_macro": acc - 0.01, **extra}


def build_store(root: Path) -> dict[str, str]:
    """Two MLflow experiments; in ``energy-pipeline`` two DVC experiments (exp-a at commit A,
    exp-b at commit B) and a workspace run at commit A. Returns run ids by name."""
    from mlflow.tracking import MlflowClient

    (root / "mlruns" / "artifacts").mkdir(parents=True)
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
    art = (root / "mlruns" / "artifacts").as_uri()
    main_exp = client.create_experiment("energy-pipeline", artifact_location=art)
    other_exp = client.create_experiment("other-exp", artifact_location=art)
    a = {"git_commit": COMMIT_A, "dvc_exp_name": "exp-a", "energy_method": METHOD}
    b = {"git_commit": COMMIT_B, "dvc_exp_name": "exp-b", "energy_method": METHOD}
    ids = {}
    # exp-a, day 0: an mlp baseline run twice (the rerun replaces it), a cnn baseline, a cnn search.
    ids["mlp_a_old"] = _run(client, main_exp, "train-mlp", T0, {**a, "stage": "train", "family": "mlp", "variant": "baseline"},
                            _trained(90.0, 0.70, 5000))
    ids["mlp_a"] = _run(client, main_exp, "train-mlp", T0 + 1000, {**a, "stage": "train", "family": "mlp", "variant": "baseline"},
                        _trained(100.0, 0.80, 5000, **{"test/energy_per_1k_j": 0.05}))
    _run(client, main_exp, "evaluate-mlp-baseline", T0 + 2000,
         {**a, "stage": "evaluate", "family": "mlp", "variant": "baseline", "source_run_id": ids["mlp_a"]},
         {"test/acc": 0.80, "test/f1_macro": 0.79, "test/energy_per_1k_j": 0.05, "test/latency_ms_per_sample": 0.25,
          "energy/total_j": 36.0})
    ids["cnn_a"] = _run(client, main_exp, "train-cnn", T0 + 3000, {**a, "stage": "train", "family": "cnn", "variant": "baseline"},
                        _trained(200.0, 0.90, 12000, **{"test/energy_per_1k_j": 0.20}))
    ids["study"] = _run(client, main_exp, "tune-cnn", T0 + 4000, {**a, "stage": "tune", "family": "cnn", "role": "study"},
                        {"search/energy_j": 300.0, "search/emissions_kg": 3e-5, "best/val_acc": 0.9})
    _run(client, main_exp, "trial-cnn-0", T0 + 4500,
         {**a, "stage": "tune", "family": "cnn", "role": "trial", "mlflow.parentRunId": ids["study"]},
         {"val/acc_best": 0.89, "energy/total_j": 150.0})
    ids["cnn_tuned"] = _run(client, main_exp, "refit-cnn", T0 + 5000,
                            {**a, "stage": "train", "family": "cnn", "variant": "tuned", "role": "refit",
                             "mlflow.parentRunId": ids["study"]},
                            _trained(250.0, 0.92, 16000, **{"test/energy_per_1k_j": 0.25}))
    # exp-b, day 2: an mlp baseline, a cnn sweep size, a compressed mlp variant.
    ids["mlp_b"] = _run(client, main_exp, "train-mlp", T0 + 2 * DAY_MS,
                        {**b, "stage": "train", "family": "mlp", "variant": "baseline"},
                        _trained(120.0, 0.85, 5000, **{"test/energy_per_1k_j": 0.06}))
    ids["sweep"] = _run(client, main_exp, "sweep-cnn-w0.5-d1", T0 + 2 * DAY_MS + 1000,
                        {**b, "stage": "sweep", "family": "cnn", "variant": "sweep-w0.5-d1", "role": "sweep"},
                        _trained(80.0, 0.88, 4000, **{"test/energy_per_1k_j": 0.08}))
    ids["compress"] = _run(client, main_exp, "compress-mlp", T0 + 2 * DAY_MS + 2000,
                           {**b, "stage": "compress", "family": "mlp", "variant": "quantize-dynamic", "technique": "quantize",
                            "level": "dynamic", "source_run_id": ids["mlp_b"]},
                           {"test/acc": 0.84, "test/f1_macro": 0.83, "test/energy_per_1k_j": 0.03,
                            "model/params_total": 5000, "model/size_bytes": 6000, "energy/total_j": 5.0,
                            "energy/emissions_kg": 5e-7, "energy/duration_s": 0.3})
    ids["scratch"] = _run(client, main_exp, "compress-mlp-scratch", T0 + 2 * DAY_MS + 3000,
                          {**b, "stage": "compress", "family": "mlp", "variant": "scratch-student", "technique": "scratch",
                           "level": "student", "source_run_id": ids["mlp_b"]},
                          {"test/acc": 0.75, "test/f1_macro": 0.74, "test/energy_per_1k_j": 0.07,
                           "model/params_total": 1200, "energy/total_j": 95.0})
    # A failed run with test/acc is not a model; another MLflow experiment holds an rnn.
    _run(client, main_exp, "train-rnn", T0 + 3 * DAY_MS, {**b, "stage": "train", "family": "rnn", "variant": "baseline"},
         _trained(10.0, 0.99, 100), status="FAILED")
    ids["rnn_other"] = _run(client, other_exp, "train-rnn", T0 + 3 * DAY_MS,
                            {**b, "stage": "train", "family": "rnn", "variant": "baseline"}, _trained(400.0, 0.95, 9000))
    return ids


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    ids = build_store(root)
    (root / "params.yaml").write_text("tracking: {experiment_name: energy-pipeline}\n")
    return root, ids


@pytest.fixture
def in_store(store, monkeypatch):
    root, ids = store
    for var in ("DVC_ROOT", "MLFLOW_TRACKING_URI", "DVC_EXP_NAME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(root)
    return root, ids


def _load(**filters):
    from pipeline.config import parse_params
    from pipeline.reporting.report import load

    return load(parse_params({}), Filters(**filters))


# The models of ``energy-pipeline`` the store holds, by (family, variant, group): the latest
# finished run of each; the other experiment holds one more.
MODELS = {("mlp", "baseline", "exp-a"), ("cnn", "baseline", "exp-a"), ("cnn", "tuned", "exp-a"),
          ("mlp", "baseline", "exp-b"), ("cnn", "sweep-w0.5-d1", "exp-b"),
          ("mlp", "quantize-dynamic", "exp-b"), ("mlp", "scratch-student", "exp-b")}
OTHER_MODELS = {("rnn", "baseline", "exp-b")}


def _finished_runs(root, experiment) -> int:
    """The finished runs of ``experiment`` in the store, counted by MLflow itself."""
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL, max_results=1000)
    return sum(r.info.status == "FINISHED" for r in runs)


def _csv_models(path) -> set:
    return {(r["family"], r["variant"], r["group"]) for r in csv.DictReader(path.open())}


def _by_name(cmp):
    return {(r["family"], r["variant"], r["group"]): r for r in cmp.rows}


def test_rows_are_evaluated_models_with_their_costs(in_store):
    """One row per model (the latest run of each), with its costs joined from its evaluate,
    search and source runs; every finished run of the experiment is read, the failed one is not."""
    root, ids = in_store
    cmp = _load()
    rows = _by_name(cmp)
    assert set(rows) == MODELS
    mlp_a = rows[("mlp", "baseline", "exp-a")]
    assert mlp_a["run_id"] == ids["mlp_a"]  # the rerun replaced the earlier run of the same model
    assert mlp_a["latency_ms_per_sample"] == 0.25  # joined from its evaluate run
    assert mlp_a["train_energy_wh"] == pytest.approx(100 / 3600) and mlp_a["train_emissions_g"] == pytest.approx(0.01)
    tuned = rows[("cnn", "tuned", "exp-a")]
    assert tuned["stage"] == "tune" and tuned["search_energy_j"] == 300.0 and tuned["obtain_energy_j"] == 550.0
    assert rows[("cnn", "baseline", "exp-a")]["obtain_energy_j"] == 200.0  # no search: its training only
    comp = rows[("mlp", "quantize-dynamic", "exp-b")]
    assert comp["stage"] == "compress" and comp["train_energy_j"] == 125.0  # source's training + its own cost
    assert comp["flops_per_sample_inference"] is None  # not logged: n/a, never borrowed
    assert rows[("mlp", "scratch-student", "exp-b")]["train_energy_j"] == 95.0  # trained from labels: its own only
    # finished runs of energy-pipeline, as MLflow counts them (11 of its 12: the FAILED one is not read)
    assert cmp.runs_read == _finished_runs(root, "energy-pipeline") == 11


def test_fronts_and_knees_over_the_store(in_store):
    cmp = _load()
    front = {cmp.rows[i]["label"] for i in cmp.fronts["train"]}
    # training energy: sweep 80 J @ .88, cnn-a 200 J @ .90, tuned 250 J @ .92; mlp-a 100 J @ .80 is
    # dominated by the sweep size, compress 125 J @ .84 and mlp-b 120 J @ .85 too.
    assert front == {"cnn-sweep-w0.5-d1 @ exp-b", "cnn-baseline @ exp-a", "cnn-tuned @ exp-a"}
    inference = {cmp.rows[i]["label"] for i in cmp.fronts["inference"]}
    assert inference == {"mlp-quantize-dynamic @ exp-b", "mlp-baseline @ exp-b", "cnn-sweep-w0.5-d1 @ exp-b",
                         "cnn-baseline @ exp-a", "cnn-tuned @ exp-a"}
    search = {cmp.rows[i]["label"] for i in cmp.fronts["search"]}
    assert "cnn-tuned @ exp-a" in search  # 550 J, the most accurate
    for axis, k in cmp.knees.items():
        assert k in cmp.fronts[axis] and cmp.rows[k][f"knee_{axis}"]


@pytest.mark.parametrize("filters, expected", [
    ({"families": ["cnn"]}, {"cnn-baseline", "cnn-tuned", "cnn-sweep-w0.5-d1"}),
    ({"stages": ["tune"]}, {"cnn-tuned"}),
    ({"stages": ["sweep", "compress"]}, {"cnn-sweep-w0.5-d1", "mlp-quantize-dynamic", "mlp-scratch-student"}),
    ({"commits": ["bbbbbbbb"]}, {"mlp-baseline", "cnn-sweep-w0.5-d1", "mlp-quantize-dynamic", "mlp-scratch-student"}),
    ({"dvc_exps": ["exp-a"], "families": ["mlp"]}, {"mlp-baseline"}),
    ({"since_ms": T0 + DAY_MS}, {"mlp-baseline", "cnn-sweep-w0.5-d1", "mlp-quantize-dynamic", "mlp-scratch-student"}),
    ({"until_ms": T0 + DAY_MS}, {"mlp-baseline", "cnn-baseline", "cnn-tuned"}),
    ({"top": 2}, {"cnn-tuned", "cnn-baseline"}),
    ({"experiments": ["other-exp"]}, {"rnn-baseline"}),
])
def test_filters_select_what_they_say(in_store, filters, expected):
    cmp = _load(**filters)
    assert {r["model"] for r in cmp.rows} == expected
    if "commits" in filters or "since_ms" in filters:
        assert {r["group"] for r in cmp.rows} == {"exp-b"}


def test_all_runs_keeps_reruns_and_labels_stay_unique(in_store):
    _, ids = in_store
    cmp = _load(all_runs=True, families=["mlp"], dvc_exps=["exp-a"])
    assert {r["run_id"] for r in cmp.rows} == {ids["mlp_a"], ids["mlp_a_old"]}
    assert len({r["label"] for r in cmp.rows}) == 2


def test_report_lists_both_experiments_and_is_self_contained(in_store, tmp_path, capsys):
    """--all-experiments: the report and its CSV hold exactly the models of both experiments;
    the HTML embeds the very PNGs written beside it, as data URIs, and refers to no network."""
    import base64

    out = tmp_path / "reports"
    assert main(["compare", "--all-experiments", "--out", str(out)]) == 0
    assert f"compared {len(MODELS | OTHER_MODELS)} models" in capsys.readouterr().out
    md, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    for text in (md, page):
        for name in ("exp-a", "exp-b", "energy-pipeline", "other-exp", "cnn-tuned", "mlp-quantize-dynamic"):
            assert name in text
    assert "### mlp" in md and "![" in md and "(accuracy_vs_energy.png)" in md
    # Self-contained: every image is a data URI, nothing refers to the network.
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.IGNORECASE)
    assert "<script" not in page and "<link" not in page
    imgs = re.findall(r'<img src="([^"]+)"', page)
    assert all(s.startswith("data:image/png;base64,") for s in imgs)
    embedded = sorted(base64.b64decode(s.removeprefix("data:image/png;base64,")) for s in imgs)
    pngs = [(out / png).read_bytes() for png in ("accuracy_vs_energy.png", "size_sweep.png")]
    assert embedded == sorted(pngs)  # each figure once, byte for byte
    for png in pngs:
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    rows = list(csv.DictReader((out / "plots" / "models.csv").open()))
    assert _csv_models(out / "plots" / "models.csv") == MODELS | OTHER_MODELS and len(rows) == len(MODELS | OTHER_MODELS)
    assert {"test_acc", "train_energy_j", "energy_per_1k_j", "obtain_energy_j", "label"} <= rows[0].keys()


def test_report_stage_uses_the_default_scope(in_store):
    """report: compare over tracking.experiment_name alone, into reports/: its models, not the
    other experiment's."""
    root, _ = in_store
    assert main(["report"]) == 0
    md = (root / "reports" / "report.md").read_text()
    assert f"{len(MODELS)} models" in md and "other-exp" not in md
    assert _csv_models(root / "reports" / "plots" / "models.csv") == MODELS


@pytest.mark.parametrize("args, message", [
    (["--since", "yesterday-ish"], "neither a date"),
    (["--until", "2026-13-45"], "neither a date"),
    (["--top", "0"], "--top must be at least 1"),
    (["--stage", "evaluate"], "unknown stage 'evaluate'"),
    (["--family", "resnet"], "unknown family 'resnet'"),
    (["--commit", "not-a-ref"], "not a commit hash prefix"),
    (["--experiment", "nope"], "no MLflow experiment named 'nope'"),
    (["--family", "rnn"], "no model matches the filters"),
    (["--since", "2000-01-01", "--until", "1999-01-01"], "--since is later than --until"),
])
def test_bad_filters_and_empty_selections_exit_2_with_a_clear_message(in_store, tmp_path, capsys, args, message):
    assert _exit_code(["compare", "--out", str(tmp_path / "r"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def _exit_code(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exit_:  # argparse rejects a value before the command runs
        return exit_.code


def test_empty_selection_names_what_exists(in_store, capsys):
    assert main(["compare", "--dvc-exp", "exp-z"]) == 2
    err = capsys.readouterr().err
    assert "DVC experiments: exp-a, exp-b" in err and "families: cnn, mlp" in err


def test_missing_store_is_an_error_and_creates_nothing(workdir):
    (workdir / "params.yaml").write_text("base: {seed: 1}\n")
    out = subprocess.run([sys.executable, "-m", "pipeline", "compare"], cwd=workdir, capture_output=True, text=True,
                         env={**os.environ, **shared_warm()}, timeout=120)
    assert out.returncode == 2 and "no MLflow store" in out.stderr and "Traceback" not in out.stderr
    assert not (workdir / "mlruns").exists() and not (workdir / "reports").exists()


def test_parse_when_and_resolve_commit():
    now = 1_000_000.0
    assert parse_when("90m", now) == int((now - 5400) * 1000)
    assert parse_when("2w", now) == int((now - 14 * 86400) * 1000)
    assert parse_when("2026-11-20T00:00:00+00:00") == 1_795_132_800_000
    with pytest.raises(FilterError):
        parse_when("3 fortnights")
    assert resolve_commit("ABCDEF12") == "abcdef12"
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    if head:
        import os

        cwd = os.getcwd()
        os.chdir(ROOT)
        try:
            assert resolve_commit("HEAD") == head
        finally:
            os.chdir(cwd)
    with pytest.raises(FilterError):
        resolve_commit("abc")  # too short to be a prefix, and no such ref


def test_compare_command_end_to_end_in_a_fresh_process(in_store, tmp_path):
    root, _ = in_store
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "pipeline", "compare", "--family", "cnn", "--out", str(tmp_path / "r")],
                         cwd=root, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    cnn = {m for m in MODELS if m[0] == "cnn"}
    assert f"compared {len(cnn)} models" in out.stdout and (tmp_path / "r" / "report.html").is_file()
    assert _csv_models(tmp_path / "r" / "plots" / "models.csv") == cnn
    assert time.perf_counter() - t0 < 60


@pytest.mark.browser
def test_report_html_renders_its_plots_in_chromium_with_the_network_off(in_store, tmp_path, chromium):
    out = tmp_path / "reports"
    assert main(["compare", "--out", str(out)]) == 0
    watched = chromium.open((out / "report.html").as_uri(), offline=True)
    page = watched.page
    assert page.evaluate("navigator.onLine") is False
    page.wait_for_function("document.images.length === 2 && Array.from(document.images).every(i => i.complete)",
                           polling=250)
    images = page.evaluate("Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight])")
    assert len(images) == 2 and all(done and w > 500 and h > 300 for done, w, h in images)
    assert page.evaluate("document.querySelectorAll('table tbody tr').length") == 7
    assert "cnn-tuned" in page.evaluate("document.body.innerText")
    # Readable at 1280 px: no table wider than the page, nothing to scroll sideways.
    page.set_viewport_size({"width": 1280, "height": 900})
    widths = page.evaluate("Array.from(document.querySelectorAll('table')).map(t => t.getBoundingClientRect().right)")
    assert widths and max(widths) <= 1280, widths
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280
    # Hovering a point of the Pareto figure names its model, run and params (an SVG title over the image).
    titles = page.evaluate("Array.from(document.querySelectorAll('figure svg circle title')).map(t => t.textContent)")
    assert any(t.startswith("cnn-tuned") and "(tune): run refit-cnn" in t for t in titles), titles
    box = page.evaluate("(() => { const r = document.querySelector('figure svg').getBoundingClientRect(), "
                        "i = document.querySelector('figure img').getBoundingClientRect(); "
                        "return [r.width - i.width, r.height - i.height]; })()")
    assert all(abs(d) < 2 for d in box), box  # the layer covers the image, scaled with it
    network = [u for u in watched.requests if not u.startswith(("file:", "data:"))]
    assert not network and not watched.blocked, (network, watched.blocked)


def test_workspace_runs_group_by_commit_and_are_selected_as_workspace():
    from pipeline.reporting.compare import model_rows, select
    from pipeline.reporting.store import RunRecord

    def rec(run_id, start, **tags):
        return RunRecord(run_id, "energy-pipeline", "train-mlp", "FINISHED", start,
                         {"stage": "train", "family": "mlp", "variant": "baseline", **tags},
                         {"test/acc": 0.8, "energy/total_j": 10.0})

    rows = model_rows([rec("r1", 1, git_commit=COMMIT_A), rec("r2", 2, git_commit=COMMIT_A),
                       rec("r3", 3, git_commit=COMMIT_A, dvc_exp_name="exp-a"), rec("r4", 4)])
    assert {r["run_id"]: r["group"] for r in rows} == {"r1": "commit aaaaaaa", "r2": "commit aaaaaaa",
                                                       "r3": "exp-a", "r4": "no commit"}
    picked = select(rows, Filters(dvc_exps=["workspace"]))
    assert {r["run_id"] for r in picked} == {"r2", "r4"}  # r1 is replaced by its rerun r2
    assert {r["run_id"] for r in select(rows, Filters(dvc_exps=["workspace"], all_runs=True))} == {"r1", "r2", "r4"}


def test_extra_sections_join_both_documents_and_stay_inert(in_store, tmp_path):
    from pipeline.reporting.render import Section
    from pipeline.reporting.report import write_outputs

    text = "Variants measured like originals.\n\n| variant | acc |\n|---|---|\n| int8 | 0.91 |\n\n<script>alert(1)</script>\n"
    written = write_outputs(_load(), tmp_path / "r", [Section("Compression", text)])
    md, page = written["markdown"].read_text(), written["html"].read_text()
    assert "## Compression" in md and "| int8 | 0.91 |" in md
    assert "<h2>Compression</h2>" in page and "<td>int8</td>" in page and "<script>" not in page


# ---------------------------------------------------------------- the report's sentences come from its rows

RAPL = "cpu=rapl;ram=estimate;gpu=none"


def _rec(i, family, variant="baseline", stage="train", method=METHOD, tags=None, **metrics):
    from pipeline.reporting.store import RunRecord

    t = {"stage": stage, "family": family, "variant": variant, "energy_method": method, "git_commit": COMMIT_A,
         **(tags or {})}
    m = {"test/acc": 0.8 + i / 100, "energy/total_j": 10.0 * (i + 1), "test/energy_per_1k_j": 0.1 * (i + 1), **metrics}
    return RunRecord(f"r{i}", "energy-pipeline", f"{stage}-{family}", "FINISHED", T0 + i, t, m)


def _compare(records):
    from pipeline.reporting.compare import compare

    return compare(records, Filters(), ["energy-pipeline"], "sqlite:///x")


def _notes(records) -> str:
    from pipeline.reporting.render import notes

    return "\n".join(notes(_compare(records)))


def test_scope_counts_and_names_the_families_it_reports(in_store):
    from pipeline.reporting.render import scope_text

    assert "7 models of 2 families (cnn, mlp) from 11 runs" in scope_text(_load())
    assert "3 models of 1 family (cnn)" in scope_text(_load(families=["cnn"]))
    assert "1 group (DVC experiment, else git commit): exp-a" in scope_text(_load(dvc_exps=["exp-a"]))


def test_energy_method_sentence_names_the_methods_the_rows_carry():
    one = _notes([_rec(0, "mlp"), _rec(1, "cnn")])
    assert f"one method, `{METHOD}`" in one and "load times the CPU's TDP" in one and "estimate" in one
    assert "rapl" not in one.lower() and "methods" not in one  # nothing about a method no row carries
    two = _notes([_rec(0, "mlp"), _rec(1, "cnn", method=RAPL), _rec(2, "rnn", method=RAPL)])
    assert f"2 methods: `{RAPL}` (2 models: CPU from Intel RAPL" in two and f"`{METHOD}` (1 model:" in two
    # Two methods are two conditions: each has its own fronts, and the notes say so.
    assert "2 conditions, which are not comparable" in two
    # An unmeasured run is named, but it is on no front: the fronts do not mix methods.
    unmeasured = _rec(1, "cnn", method="unavailable")
    del unmeasured.metrics["energy/total_j"], unmeasured.metrics["test/energy_per_1k_j"]
    text = _notes([_rec(0, "mlp"), unmeasured])
    assert "`unavailable` (1 model: not measured" in text
    assert "1 model without training energy; 1 model without inference energy" in text


def test_energy_sentences_follow_what_the_selection_holds(in_store):
    from pipeline.reporting.render import notes

    full = "\n".join(notes(_load()))
    assert "read for 1 tuned model here" in full and "compressed variant adds its compression cost" in full
    assert "every model has all three measurements" in full and "whose source run was not read" not in full
    # No search, no compressed model: no sentence about them, and what search + training means then.
    plain = _notes([_rec(0, "mlp"), _rec(1, "cnn")])
    assert "No model here came from a search" in plain and "compressed variant" not in plain
    # A variant whose source run is not in the store counts its compression cost alone, and says so.
    orphan = _rec(1, "cnn", "quant_dynamic-int8", stage="compress", tags={"source_run_id": "gone", "technique": "quant_dynamic"})
    text = _notes([_rec(0, "cnn"), orphan])
    assert "1 compressed variant whose source run was not read (cnn-quant_dynamic-int8) counts its compression cost alone" in text


def test_flops_sentence_gives_the_reasons_the_rows_carry():
    int8 = "not countable: torch's FLOP counter has no formula for int8 kernels"
    text = _notes([_rec(0, "mlp", **{"model/flops_per_sample_inference": 100.0, "final/train_flops_total": 1e6}),
                   _rec(1, "cnn", "quant_static-int8", stage="compress", tags={"flops_note": int8, "technique": "quant_static"})])
    assert f"FLOPs per sample n/a: {int8} (1 model)." in text
    assert "Train FLOPs n/a for 1 model of stage compress" in text and "LSTM" not in text
    assert "n/a" not in _notes([_rec(0, "mlp", **{"model/flops_per_sample_inference": 100.0, "final/train_flops_total": 1e6})])


def test_groups_sentence_only_when_a_model_appears_in_several_groups(in_store):
    from pipeline.reporting.render import groups_note

    # mlp-baseline is in exp-a and in exp-b; nothing else is in both.
    assert groups_note(_load()).startswith("1 model appears in more than one of the 2 groups")
    assert groups_note(_load(dvc_exps=["exp-a"])) is None  # one group
    assert groups_note(_load(families=["cnn"])) is None  # two groups, no model in both


def test_front_labels_stay_clear_of_each_other_around_a_crowded_knee():
    """A front of eight: its two ends far apart, six models crowded within a few percent of each
    other (where the knee sits). Every label is drawn, none overlaps another."""
    from pipeline.reporting.figures import pareto_axes

    crowd = [(f"v{i}", 10.0 * 1.02 ** i, 0.80 + 0.002 * i) for i in range(6)]
    ends = [("small", 0.5, 0.40), ("large", 800.0, 0.95)]
    records = [_rec(i, "mlp", variant=v, **{"energy/total_j": j, "test/acc": acc, "test/energy_per_1k_j": j / 100})
               for i, (v, j, acc) in enumerate(crowd + ends)]
    fig, points = pareto_axes(_compare(records))
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    labels = [t for t in fig.axes[0].texts if t.get_text().startswith("mlp-")]
    assert len(labels) == 8
    boxes = [t.get_window_extent(renderer) for t in labels]
    overlaps = [(labels[i].get_text(), labels[j].get_text()) for i in range(8) for j in range(i + 1, 8)
                if boxes[i].overlaps(boxes[j])]
    assert not overlaps, overlaps
    # every point has a hover title naming its model and run, at its place in the image
    width, height = fig.get_figwidth() * fig.dpi, fig.get_figheight() * fig.dpi
    assert len(points) == 8 * 3 and all(0 < x < width and 0 < y < height for x, y, _ in points)
    assert {title.split("\n")[0] for _, _, title in points} == {f"mlp-{v} (train): run train-mlp"
                                                                  for v, _, _ in crowd + ends}
