"""Each dvc.yaml stage lists, in its deps, every pipeline module that its command imports (derived
from the code with ``ast``: see tests/importgraph.py), so that changing a module reruns exactly
the stages that use it. ``python scripts/stage_deps.py`` prints the deps each stage should have."""
import pytest

from tests.importgraph import ROOT, ImportGraph, covered_by, dep_paths, load_stages

GRAPH = ImportGraph()
STAGES = load_stages()
FIX = "python scripts/stage_deps.py prints the deps each stage should list (--write puts them in dvc.yaml)"


def _command(stage: str) -> str:
    command = GRAPH.stage_command(STAGES[stage]["cmd"])
    if command is None:
        pytest.skip(f"stage {stage} does not run python -m {GRAPH.package}")
    return command


@pytest.mark.parametrize("stage", list(STAGES))
def test_stage_deps_cover_the_modules_it_imports(stage):
    command = _command(stage)
    deps = dep_paths(STAGES[stage])
    missing = sorted(m for m in GRAPH.command_closure(command) if not covered_by(m, deps))
    assert not missing, (f"stage {stage} (python -m {GRAPH.package} {command}) imports modules that its deps in "
                         f"dvc.yaml miss: {', '.join(missing)}. {FIX}")


@pytest.mark.parametrize("stage", list(STAGES))
def test_stage_code_deps_exist(stage):
    gone = [d for d in dep_paths(STAGES[stage])
            if (d == GRAPH.package or d.startswith(GRAPH.package + "/")) and not (ROOT / d).exists()]
    assert not gone, f"stage {stage} lists deps that do not exist: {', '.join(gone)}. {FIX}"


@pytest.mark.parametrize("stage", list(STAGES))
def test_closure_follows_the_handlers_lazy_imports(stage):
    """Guards the derivation itself: each command's handler imports its own modules inside the
    function, so its closure is larger than what every command imports."""
    command = _command(stage)
    closure = GRAPH.command_closure(command)
    assert {f"{GRAPH.package}/__main__.py", f"{GRAPH.package}/cli.py"} <= closure
    assert closure > GRAPH.common_closure(), f"{command}: no import found inside its handler"
