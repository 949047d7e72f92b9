import subprocess
import sys

import pytest


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_help_lists_the_stages(workdir):
    out = run_cli("--help", cwd=workdir)
    assert out.returncode == 0
    for stage in ("prepare", "train", "evaluate", "report"):
        assert stage in out.stdout


@pytest.mark.parametrize(
    "text, expected",
    [
        ("train:\n  lr: -1\n", "train.lr"),
        ("train:\n  optimizer: rmsprop\n", "train.optimizer"),
        ("data:\n  dataset: cifar\n", "data.dataset"),
        ("trian:\n  lr: 0.1\n", "trian: unknown key"),
        ("train: [1, 2\n", "YAML syntax error at line"),
    ],
)
def test_bad_params_exit_2_naming_the_key_and_write_nothing(workdir, text, expected):
    (workdir / "params.yaml").write_text(text)
    out = run_cli("prepare", cwd=workdir)
    assert out.returncode == 2
    assert expected in out.stderr and "Traceback" not in out.stderr
    assert not (workdir / "data").exists() and not (workdir / "mlruns").exists()


def test_unknown_family_is_rejected(workdir):
    out = run_cli("train", "--family", "resnet", cwd=workdir)
    assert out.returncode == 2 and "unknown family 'resnet'" in out.stderr


def test_missing_prepared_data_says_what_to_run(workdir):
    (workdir / "params.yaml").write_text("base: {seed: 1}\n")
    out = run_cli("train", "--family", "mlp", cwd=workdir)
    assert out.returncode == 2 and "python -m pipeline prepare" in out.stderr
    assert not (workdir / "mlruns").exists()  # no run was opened for a stage that could not start
