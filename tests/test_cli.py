import os
import subprocess
import sys

import pytest

from .conftest import shared_warm


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd, env={**os.environ, **shared_warm()},
                          capture_output=True, text=True, timeout=120)


def test_help_lists_the_stages(workdir):
    """Every stage of dvc.yaml (but the one writing the code's fingerprints) is a command of the
    CLI: ``--help`` lists it, and the command line dvc.yaml runs for it parses, for every value of
    its matrix (from params.yaml), into that command with those values, so a renamed command or
    option fails here, not in ``dvc repro``."""
    import itertools
    import re
    import shlex

    import yaml

    from pipeline.cli import build_parser

    from .conftest import ROOT

    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    # Every stage but the first, which writes the fingerprints of the commands' code.
    assert dvc.pop("fingerprints")["cmd"].startswith("python scripts/stage_deps.py ")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())

    def resolve(value):  # a matrix entry: a list, or ${dotted.key} of params.yaml
        if isinstance(value, str):
            node = params
            for key in re.fullmatch(r"\$\{(.+)\}", value).group(1).split("."):
                node = node[key]
            return node
        return value

    out = run_cli("--help", cwd=workdir)
    assert out.returncode == 0
    listed = set(re.findall(r"^ {4}(\w+)\s", out.stdout, re.MULTILINE))
    assert set(dvc) <= listed, set(dvc) - listed
    parsed = 0
    for stage, spec in dvc.items():
        matrix = {k: resolve(v) for k, v in spec.get("matrix", {}).items()}
        for values in itertools.product(*matrix.values()):
            item = dict(zip(matrix, values, strict=True))
            cmd = re.sub(r"\$\{item\.(\w+)\}", lambda m, item=item: str(item[m.group(1)]), spec["cmd"])
            argv = shlex.split(cmd)
            assert argv[:3] == ["python", "-m", "pipeline"], cmd
            args = build_parser().parse_args(argv[3:])
            assert args.command == stage, cmd
            for key, value in item.items():
                assert str(getattr(args, key)) == str(value), (cmd, key)
            parsed += 1
    assert parsed >= len(dvc)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("train:\n  lr: -1\n", "train.lr"),
        ("train:\n  optimizer: lion\n", "train.optimizer"),
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
    (workdir / "params.yaml").write_text("base: {seed: 1}\n")
    out = run_cli("train", "--family", "resnet", cwd=workdir)
    assert out.returncode == 2 and "unknown family 'resnet'" in out.stderr


def test_missing_prepared_data_says_what_to_run(workdir):
    (workdir / "params.yaml").write_text("base: {seed: 1}\n")
    out = run_cli("train", "--family", "mlp", cwd=workdir)
    assert out.returncode == 2 and "python -m pipeline prepare" in out.stderr
    assert not (workdir / "mlruns").exists()  # no run was opened for a stage that could not start


def test_apply_profile_merges_into_params_yaml_and_refuses_a_bad_one(workdir, capsys):
    """``apply-profile`` writes params.yaml with the profile merged on top (what ``dvc repro`` then
    runs); a profile that makes the params invalid exits 2 naming the key and leaves the file as
    it was."""
    import yaml

    from pipeline import cli
    from pipeline.config import load_params

    from .conftest import ROOT

    (workdir / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    (workdir / "examples").symlink_to(ROOT / "examples")
    assert cli.main(["apply-profile", str(ROOT / "profiles" / "ucr.yaml")]) == 0
    params = load_params(workdir / "params.yaml")
    assert params.data.dataset == "ucr" and params.data.source_params.name == "GunPoint"
    assert params.families[-1] == "fcn" and params.models.for_family("fcn").channels == 128
    assert params.models.for_family("mlp").width == 256  # untouched keys kept
    # Spelt out, as DVC reads declared params from the file: the family's own default space too.
    written = yaml.safe_load((workdir / "params.yaml").read_text())
    assert written["tune"]["space"]["fcn"] == {"channels": [32, 64, 128]}
    before = (workdir / "params.yaml").read_text()
    (workdir / "bad.yaml").write_text(yaml.safe_dump({"train": {"lr": -1}}))
    capsys.readouterr()
    assert cli.main(["apply-profile", "bad.yaml"]) == cli.EXIT_BAD_INPUT
    assert "train.lr" in capsys.readouterr().err
    assert (workdir / "params.yaml").read_text() == before
