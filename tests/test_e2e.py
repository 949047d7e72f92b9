"""The real ``dvc repro`` in a temporary git repo with tiny params (slow: ~2-3 minutes): a UCR
archive problem from the aeon wheel (GunPoint, its own train/test split) with a built-in family
and the FCN example, a user family named by import path."""
import csv
import io
import json
import subprocess
import sys

import pytest
import yaml

from pipeline import warm
from pipeline.config import parse_params
from pipeline.models.family import get_family

from .conftest import make_dvc_repo, tiny_raw, warm_env

# The module fixture runs the whole `dvc repro` (2-4 minutes on 2 cores) inside the first test.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
# A built-in family and a user's (examples/fcn.py): the stage wiring is the same for every family
# (tests/test_family_plugin.py runs a registered one through every stage in-process).
FAMILIES = ["mlp", "fcn"]
SWEEP_STAGE = "sweep@mlp-0.5-1"  # conftest's TINY sweeps mlp at half width
OVERRIDES = {**tiny_raw(**{"data.dataset": "ucr", "data.ucr": {"name": "GunPoint"},
                           "models.fcn": {"target": "examples.fcn:fcn", "channels": 4},
                           "compress.distill.student.fcn": {"channels": 2}}), "families": FAMILIES}


def sh(cmd, cwd, env, check=True):
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return out


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """The repo after its first ``dvc repro``, whose commands ran as a user's do: in a warm server
    (pipeline.warm), started by the first of them."""
    d = tmp_path_factory.mktemp("e2e")
    env, git = make_dvc_repo(d, OVERRIDES)
    with warm_env(env) as env:
        first = sh(["dvc", "repro"], d, env)
        yield d, env, git, first


def _client(d):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{d / 'mlruns' / 'mlflow.db'}")


def test_repro_runs_every_stage_and_tracks_every_run(repo):
    d, env, _, first = repo
    stages = ["prepare", "report"] + [f"{s}@{f}" for s in ("train", "tune") for f in FAMILIES]
    stages += [f"evaluate@{f}-{v}" for f in FAMILIES for v in ("baseline", "tuned")]
    stages += [f"compress@{f}-baseline" for f in FAMILIES]
    stages += [SWEEP_STAGE]
    for stage in stages:
        assert f"Running stage '{stage}'" in first.stdout
    # The first command, prepare, started the warm server and ran beside its start (it needs little
    # of what the server imports: warm.BESIDE_START); every command after it ran in the server.
    served = [line for log in warm.servers_of(env) for line in log.read_text().splitlines() if ": exit 0 after" in line]
    assert len(served) == len(stages) - 1 and not [line for line in served if ": prepare: " in line], served
    for f in FAMILIES:
        train = json.loads((d / "metrics" / "train" / f"{f}.json").read_text())
        tune = json.loads((d / "metrics" / "tune" / f"{f}.json").read_text())
        assert train["energy_j"] > 0 and tune["search_energy_j"] > 0 and tune["trials"] == 2
        for v in ("baseline", "tuned"):
            ev = json.loads((d / "metrics" / "evaluate" / f"{f}-{v}.json").read_text())
            assert 0 <= ev["test_acc"] <= 1 and ev["energy_per_1k_j"] > 0
            assert (d / "models" / f / v / "model.pt").is_file()
    card = json.loads((d / "data" / "prepared" / "ucr.card.json").read_text())  # the archive's own split kept
    assert card["name"] == "GunPoint" and card["num_samples"]["test"] == 150
    assert card["num_samples"]["train"] + card["num_samples"]["val"] == 50
    report = (d / "reports" / "report.md").read_text()
    assert report.count("|") > 20 and "fcn-baseline" in report and "GunPoint" in report
    assert (d / "reports" / "accuracy_vs_energy.png").stat().st_size > 1000
    page = (d / "reports" / "report.html").read_text()  # compare: every model row, sweep and compress included
    assert "mlp-sweep-w0.5-d1" in page and "mlp-baseline" in page and "data:image/png;base64," in page
    assert json.loads((d / "metrics" / "sweep" / "mlp-sweep-w0.5-d1.json").read_text())["test_acc"] > 0

    client = _client(d)
    exp = client.get_experiment_by_name("energy-pipeline")
    runs = client.search_runs([exp.experiment_id])
    assert all(r.info.status == "FINISHED" for r in runs)
    by_role = {}
    compress_runs = [r for r in runs if r.data.tags["stage"] == "compress"]
    # quant_dynamic, quant_static (where the family has static int8 kernels), prune_global,
    # prune_structured, distill, scratch
    parse_params(OVERRIDES)  # registers fcn in this process too (for this test only: conftest restores the registry)
    expected = {f: 6 if get_family(f).static_int8_unsupported is None else 5 for f in FAMILIES}
    assert len(compress_runs) == sum(expected.values())
    for r in compress_runs:
        assert r.data.tags["variant"] == f"{r.data.tags['technique']}-{r.data.tags['level']}"
        assert "test/acc" in r.data.metrics and r.data.tags["source_run_id"]
    for f in FAMILIES:
        c = json.loads((d / "metrics" / "compress" / f"{f}-baseline.json").read_text())
        assert c["reference"]["energy_per_1k_j"] > 0 and len(c["variants"]) == expected[f]
    (sweep,) = [r for r in runs if r.data.tags["stage"] == "sweep"]
    assert sweep.data.tags["variant"] == "sweep-w0.5-d1" and "test/acc" in sweep.data.metrics
    for r in runs:
        if r.data.tags["stage"] in ("compress", "sweep"):
            continue
        by_role.setdefault((r.data.tags["stage"], r.data.tags.get("role", r.data.tags.get("variant"))), []).append(r)
    n = len(FAMILIES)
    assert {k: len(v) for k, v in by_role.items()} == {
        ("train", "baseline"): n, ("train", "refit"): n, ("tune", "study"): n, ("tune", "trial"): 2 * n,
        ("evaluate", "baseline"): n, ("evaluate", "tuned"): n}
    for r in runs:
        if r.data.tags.get("role") != "study":
            assert r.data.metrics["energy/total_j"] > 0 and r.data.tags["energy_method"].startswith("cpu=")
    for r in by_role[("train", "baseline")] + by_role[("train", "refit")]:
        assert "final/val_acc" in r.data.metrics and "test/acc" in r.data.metrics
    for r in by_role[("tune", "study")]:
        assert r.data.metrics["search/energy_j"] > 0


def test_second_repro_runs_nothing(repo):
    d, env, _, _ = repo
    again = sh(["dvc", "repro"], d, env)
    assert "Running stage" not in again.stdout


def test_changing_lr_invalidates_train_only(repo):
    d, env, _, _ = repo
    status = json.loads(sh(["dvc", "status", "--json"], d, env).stdout or "{}")
    assert status == {}
    params = yaml.safe_load((d / "params.yaml").read_text())
    params["train"]["lr"] = 0.005
    (d / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # The params a stage reads are in its fingerprint, which the first stage writes from params.yaml.
    assert set(json.loads(sh(["dvc", "status", "--json"], d, env).stdout)) == {"fingerprints"}
    sh(["dvc", "repro", "fingerprints"], d, env)
    changed = set(json.loads(sh(["dvc", "status", "--json"], d, env).stdout))
    # train and tune read train.lr; evaluate and report follow their changed deps.
    assert changed == {f"{s}@{f}" for s in ("train", "tune") for f in FAMILIES} | {SWEEP_STAGE}
    params["train"]["lr"] = 0.003
    (d / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(["dvc", "repro", "fingerprints"], d, env)
    assert json.loads(sh(["dvc", "status", "--json"], d, env).stdout or "{}") == {}


def test_a_targeted_dvc_experiment_reruns_its_chain_only_and_shows_accuracy_and_energy(repo):
    d, env, git, _ = repo
    sh(git + ["add", "-A"], d, env)
    sh(git + ["commit", "-qm", "baseline"], d, env)
    # A model-size experiment aimed at one evaluation: the MLP's training and that evaluation run
    # again; nothing upstream (prepare), beside (fcn) or downstream of other targets (tune, report).
    run = sh(["dvc", "exp", "run", "-n", "width-exp", "-S", "models.mlp.width=24", "evaluate@mlp-baseline"],
             d, env).stdout
    for stage in ("train@mlp", "evaluate@mlp-baseline"):
        assert f"Running stage '{stage}'" in run
    for stage in ["prepare", "tune@mlp", "report", SWEEP_STAGE] + [f"{s}@{f}" for s in ("train", "tune") for f in FAMILIES[1:]]:
        assert f"Running stage '{stage}'" not in run, stage
    table = sh(["dvc", "exp", "show", "--csv"], d, env).stdout
    rows = list(csv.DictReader(io.StringIO(table)))
    cols = rows[0].keys()
    assert any(c.endswith("test_acc") for c in cols) and any(c.endswith("energy_j") for c in cols)
    assert any(r.get("Experiment") == "width-exp" for r in rows)
    runs = _client(d).search_runs([_client(d).get_experiment_by_name("energy-pipeline").experiment_id],
                                  "tags.dvc_exp_name = 'width-exp'")
    assert {r.data.tags["stage"] for r in runs} == {"train", "evaluate"}


def test_dvc_plots_metrics_diff_and_compare_across_experiments(repo):
    d, env, _, _ = repo
    table = sh(["dvc", "exp", "show", "--csv"], d, env).stdout
    cols = list(csv.DictReader(io.StringIO(table)))[0].keys()
    for suffix in ("test_acc", "energy_j", "emissions_kg", "energy_per_1k_j"):
        assert any(c.endswith(suffix) for c in cols), suffix
    diff = json.loads(sh(["dvc", "metrics", "diff", "HEAD", "width-exp", "--json"], d, env).stdout)
    assert any(k.startswith("metrics/train/") for k in diff) and any(k.startswith("metrics/evaluate/") for k in diff)
    plots = json.loads(sh(["dvc", "plots", "show", "--json"], d, env).stdout)
    names = set(plots.get("data", plots))
    assert "Accuracy vs training energy" in names and any("epochs" in n for n in names), names
    out = sh([sys.executable, "-m", "pipeline", "compare", "--out", "compare-all"], d, env).stdout
    assert "compared" in out
    md = (d / "compare-all" / "report.md").read_text()
    assert "width-exp" in md and "commit " in md  # the experiment beside the committed workspace runs
