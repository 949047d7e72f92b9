"""Each dvc.yaml stage that runs a pipeline command depends on that command's fingerprint
(``fingerprints/<command>.txt``, or ``<command>-<family>.txt`` where it reads a family's params:
the value of each param its stage's meta lists, then every module the command imports with its
hash, derived from the code with ``ast``: see scripts/importgraph.py), which the ``fingerprints``
stage writes from the whole package and params.yaml; so changing a module or a param reruns exactly
the stages that import or read it. ``python scripts/stage_deps.py`` prints the deps each stage
should have."""
import copy
import json
import shutil

import pytest
import yaml

from scripts.importgraph import ROOT, ImportGraph, dep_paths, load_stages
from scripts.stage_deps import (
    FAMILY,
    FINGERPRINTS,
    commands,
    fingerprint,
    fingerprint_path,
    main,
    stage_params,
    write_fingerprints,
)

GRAPH = ImportGraph()
STAGES = load_stages()
COMMANDS = commands(GRAPH, STAGES)
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
FIX = "python scripts/stage_deps.py prints the deps each stage should list (--write puts them in dvc.yaml)"


@pytest.mark.parametrize("stage", list(COMMANDS))
def test_a_stage_depends_on_its_commands_fingerprint_and_on_no_module_or_param_itself(stage):
    command = COMMANDS[stage]
    deps = dep_paths(STAGES[stage])
    per_family = any(FAMILY in k for k in stage_params(STAGES[stage]))
    assert fingerprint_path(command, per_family) in deps, f"stage {stage} misses its fingerprint. {FIX}"
    assert stage_params(STAGES[stage]), f"stage {stage} lists no params under meta"
    assert "params" not in STAGES[stage], f"stage {stage}: list the params its command reads under meta: params"
    listed = [d for d in deps if d == GRAPH.package or d.startswith(GRAPH.package + "/")]
    assert not listed, f"stage {stage} lists pipeline code ({', '.join(listed)}) beside its fingerprint. {FIX}"


def test_the_fingerprints_stage_depends_on_the_whole_package_and_writes_the_folder_the_stages_read():
    stage = STAGES["fingerprints"]
    assert {GRAPH.package, "scripts/stage_deps.py", "scripts/importgraph.py", "params.yaml"} <= set(dep_paths(stage))
    assert stage["cmd"] == f"python scripts/stage_deps.py --fingerprints {FINGERPRINTS}"
    assert [next(iter(o)) if isinstance(o, dict) else o for o in stage["outs"]] == [FINGERPRINTS]


def test_a_fingerprint_lists_every_module_its_command_imports_with_its_hash():
    text = fingerprint(GRAPH, "report")
    listed = {line.split("  ", 1)[1] for line in text.splitlines() if not line.startswith("#")}
    assert listed == GRAPH.command_closure("report")
    assert "pipeline/reporting/report.py" in listed and "pipeline/training/train.py" not in listed


def _copy(tmp_path):
    for part in ("pipeline", "scripts"):
        shutil.copytree(ROOT / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    return ImportGraph(tmp_path), load_stages(tmp_path / "dvc.yaml")


def test_changing_a_module_changes_exactly_the_fingerprints_of_the_commands_that_import_it(tmp_path):
    graph, stages = _copy(tmp_path)
    written = {p.stem for p in write_fingerprints(graph, stages, tmp_path / "fp", PARAMS)}
    # one per command, or one per family of its stages where it reads a family's params
    assert written >= {"prepare", "evaluate", "report", "compress"} | {f"train-{f}" for f in PARAMS["families"]} \
        | {f"tune-{f}" for f in PARAMS["families"]} | {f"sweep-{f}" for f in PARAMS["sweep"]["families"]}
    assert write_fingerprints(graph, stages, tmp_path / "fp", PARAMS) == []  # unchanged: nothing rewritten
    module = "pipeline/reporting/report.py"
    with open(tmp_path / module, "a") as f:
        f.write("\n# changed\n")
    changed = {p.stem for p in write_fingerprints(ImportGraph(tmp_path), stages, tmp_path / "fp", PARAMS)}
    assert changed == {c for c in set(COMMANDS.values()) if module in GRAPH.command_closure(c)} == {"report"}
    (tmp_path / "fp" / "gone.txt").write_text("a command no stage runs any more")
    write_fingerprints(ImportGraph(tmp_path), stages, tmp_path / "fp", PARAMS)
    assert not (tmp_path / "fp" / "gone.txt").exists()


def test_changing_a_param_changes_exactly_the_fingerprints_of_the_stages_that_read_it(tmp_path):
    graph, stages = _copy(tmp_path)
    write_fingerprints(graph, stages, tmp_path / "fp", PARAMS)
    changed = copy.deepcopy(PARAMS)
    changed["models"]["cnn"]["channels"] += 1  # read by cnn's training, search and sweep, not by compress
    assert {p.stem for p in write_fingerprints(graph, stages, tmp_path / "fp", changed)} == {
        "train-cnn", "tune-cnn", "sweep-cnn"}
    changed["evaluate"]["latency_samples"] += 1
    readers = {COMMANDS[s] for s in COMMANDS if "evaluate" in stage_params(STAGES[s])}
    assert readers == {"evaluate", "compress", "sweep"}
    assert {p.stem.split("-")[0] for p in write_fingerprints(graph, stages, tmp_path / "fp", changed)} == readers
    text = (tmp_path / "fp" / "train-cnn.txt").read_text()
    assert f'models.cnn: {json.dumps(changed["models"]["cnn"], sort_keys=True)}' in text.splitlines()
    del changed["models"]["cnn"]  # an absent key is written as such (the command reports it when it runs)
    write_fingerprints(graph, stages, tmp_path / "fp", changed)
    assert "# models.cnn: absent from params.yaml" in (tmp_path / "fp" / "train-cnn.txt").read_text()


def test_a_params_file_that_is_no_yaml_mapping_fails_naming_it(tmp_path, capsys):
    graph, stages = _copy(tmp_path)
    for text, what in (("a: [1,\n", "not valid YAML"), ("- 1\n", "expected a mapping")):
        (tmp_path / "params.yaml").write_text(text)
        with pytest.raises(SystemExit, match=what) as exc:
            main(["--dvc-yaml", str(tmp_path / "dvc.yaml"), "--fingerprints", str(tmp_path / "fp")])
        assert "params.yaml" in str(exc.value)
    assert not (tmp_path / "fp").exists()  # nothing written


@pytest.mark.parametrize("stage", list(COMMANDS))
def test_closure_follows_the_handlers_lazy_imports(stage):
    """Guards the derivation itself: each command's handler imports its own modules inside the
    function, so its closure is larger than what every command imports."""
    command = COMMANDS[stage]
    closure = GRAPH.command_closure(command)
    assert {f"{GRAPH.package}/__main__.py", f"{GRAPH.package}/cli.py"} <= closure
    assert closure > GRAPH.common_closure(), f"{command}: no import found inside its handler"
