"""Each dvc.yaml stage that runs a pipeline command depends on that command's fingerprint
(``fingerprints/<command>.txt``: every module the command imports, with its hash, derived from the
code with ``ast``: see scripts/importgraph.py), which the ``fingerprints`` stage writes from the whole
package; so changing a module reruns exactly the stages that import it.
``python scripts/stage_deps.py`` prints the deps each stage should have."""
import shutil

import pytest

from scripts.importgraph import ROOT, ImportGraph, dep_paths, load_stages
from scripts.stage_deps import FINGERPRINTS, commands, fingerprint, fingerprint_path, write_fingerprints

GRAPH = ImportGraph()
STAGES = load_stages()
COMMANDS = commands(GRAPH, STAGES)
FIX = "python scripts/stage_deps.py prints the deps each stage should list (--write puts them in dvc.yaml)"


@pytest.mark.parametrize("stage", list(COMMANDS))
def test_a_stage_depends_on_its_commands_fingerprint_and_on_no_module_itself(stage):
    command = COMMANDS[stage]
    deps = dep_paths(STAGES[stage])
    assert fingerprint_path(command) in deps, f"stage {stage} misses its code's deps. {FIX}"
    listed = [d for d in deps if d == GRAPH.package or d.startswith(GRAPH.package + "/")]
    assert not listed, f"stage {stage} lists pipeline code ({', '.join(listed)}) beside its fingerprint. {FIX}"


def test_the_fingerprints_stage_depends_on_the_whole_package_and_writes_the_folder_the_stages_read():
    stage = STAGES["fingerprints"]
    assert {GRAPH.package, "scripts/stage_deps.py", "scripts/importgraph.py"} <= set(dep_paths(stage))
    assert stage["cmd"] == f"python scripts/stage_deps.py --fingerprints {FINGERPRINTS}"
    assert [next(iter(o)) if isinstance(o, dict) else o for o in stage["outs"]] == [FINGERPRINTS]


def test_a_fingerprint_lists_every_module_its_command_imports_with_its_hash():
    text = fingerprint(GRAPH, "report")
    listed = {line.split("  ", 1)[1] for line in text.splitlines() if not line.startswith("#")}
    assert listed == GRAPH.command_closure("report")
    assert "pipeline/reporting/report.py" in listed and "pipeline/training/train.py" not in listed


def test_changing_a_module_changes_exactly_the_fingerprints_of_the_commands_that_import_it(tmp_path):
    for part in ("pipeline", "scripts"):
        shutil.copytree(ROOT / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    graph, stages = ImportGraph(tmp_path), load_stages(tmp_path / "dvc.yaml")
    assert len(write_fingerprints(graph, stages, tmp_path / "fp")) == len(set(COMMANDS.values()))
    assert write_fingerprints(graph, stages, tmp_path / "fp") == []  # unchanged: nothing rewritten
    module = "pipeline/reporting/report.py"
    with open(tmp_path / module, "a") as f:
        f.write("\n# changed\n")
    changed = {p.stem for p in write_fingerprints(ImportGraph(tmp_path), stages, tmp_path / "fp")}
    assert changed == {c for c in set(COMMANDS.values()) if module in GRAPH.command_closure(c)} == {"report"}
    (tmp_path / "fp" / "gone.txt").write_text("a command no stage runs any more")
    write_fingerprints(ImportGraph(tmp_path), stages, tmp_path / "fp")
    assert not (tmp_path / "fp" / "gone.txt").exists()


@pytest.mark.parametrize("stage", list(COMMANDS))
def test_closure_follows_the_handlers_lazy_imports(stage):
    """Guards the derivation itself: each command's handler imports its own modules inside the
    function, so its closure is larger than what every command imports."""
    command = COMMANDS[stage]
    closure = GRAPH.command_closure(command)
    assert {f"{GRAPH.package}/__main__.py", f"{GRAPH.package}/cli.py"} <= closure
    assert closure > GRAPH.common_closure(), f"{command}: no import found inside its handler"
