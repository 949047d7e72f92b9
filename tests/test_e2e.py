"""The real ``dvc repro`` in a temporary git repo with tiny params (slow: ~2-3 minutes)."""
import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import ROOT, tiny_raw

pytestmark = pytest.mark.slow
FAMILIES = ["mlp", "cnn", "rnn", "transformer"]


def sh(cmd, cwd, env, check=True):
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return out


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    d = tmp_path_factory.mktemp("e2e")
    shutil.copytree(ROOT / "pipeline", d / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", d / "dvc.yaml")
    raw = deep_merge(yaml.safe_load((ROOT / "params.yaml").read_text()), tiny_raw())
    raw["families"] = FAMILIES
    (d / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "MLFLOW_TRACKING"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["DVC_NO_ANALYTICS"] = "1"
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
    sh(["git", "init", "-q"], d, env)
    sh(["dvc", "init", "-q"], d, env)
    sh(["dvc", "config", "core.analytics", "false"], d, env)
    (d / ".gitignore").write_text("/mlruns/\n__pycache__/\n")
    sh(git + ["add", "-A"], d, env)
    sh(git + ["commit", "-qm", "init"], d, env)
    first = sh(["dvc", "repro"], d, env)
    return d, env, git, first


def _client(d):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{d / 'mlruns' / 'mlflow.db'}")


def test_repro_runs_every_stage_and_tracks_every_run(repo):
    d, env, _, first = repo
    for stage in ["prepare", "report"] + [f"{s}@{f}" for s in ("train", "evaluate") for f in FAMILIES]:
        assert f"Running stage '{stage}'" in first.stdout
    for f in FAMILIES:
        train = json.loads((d / "metrics" / "train" / f"{f}.json").read_text())
        ev = json.loads((d / "metrics" / "evaluate" / f"{f}.json").read_text())
        assert train["energy_j"] > 0 and 0 <= ev["test_acc"] <= 1 and ev["energy_per_1k_j"] > 0
        assert (d / "models" / f / "model.pt").is_file()
    assert (d / "reports" / "report.md").read_text().count("|") > 20
    assert (d / "reports" / "accuracy_vs_energy.png").stat().st_size > 1000

    client = _client(d)
    exp = client.get_experiment_by_name("energy-pipeline")
    runs = client.search_runs([exp.experiment_id])
    by = {(r.data.tags["stage"], r.data.tags["family"]): r for r in runs}
    assert len(runs) == 8 and set(by) == {(s, f) for s in ("train", "evaluate") for f in FAMILIES}
    for (stage, _), r in by.items():
        assert r.info.status == "FINISHED"
        assert r.data.metrics["energy/total_j"] > 0
        assert ("final/val_acc" if stage == "train" else "test/acc") in r.data.metrics
        assert r.data.tags["energy_method"].startswith("cpu=")


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
    changed = set(json.loads(sh(["dvc", "status", "--json"], d, env).stdout))
    assert changed == {f"train@{f}" for f in FAMILIES}  # downstream stages follow their changed deps
    params["train"]["lr"] = 0.003
    (d / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_dvc_experiment_reruns_downstream_and_shows_accuracy_and_energy(repo):
    d, env, git, _ = repo
    sh(git + ["add", "-A"], d, env)
    sh(git + ["commit", "-qm", "baseline"], d, env)
    run = sh(["dvc", "exp", "run", "-n", "lr-exp", "-S", "train.lr=0.01"], d, env).stdout
    assert "Running stage 'prepare'" not in run
    for f in FAMILIES:
        assert f"Running stage 'train@{f}'" in run and f"Running stage 'evaluate@{f}'" in run
    assert "Running stage 'report'" in run
    table = sh(["dvc", "exp", "show", "--csv"], d, env).stdout
    rows = list(csv.DictReader(io.StringIO(table)))
    cols = rows[0].keys()
    assert any(c.endswith("test_acc") for c in cols) and any(c.endswith("energy_j") for c in cols)
    assert any(r.get("Experiment") == "lr-exp" for r in rows)
    runs = _client(d).search_runs([_client(d).get_experiment_by_name("energy-pipeline").experiment_id],
                                  "tags.dvc_exp_name = 'lr-exp'")
    assert {r.data.tags["stage"] for r in runs} == {"train", "evaluate"} and len(runs) == 8
