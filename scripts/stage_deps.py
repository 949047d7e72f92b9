"""The code each DVC stage depends on: one fingerprint file per pipeline command.

A stage runs ``python -m pipeline <command>``; the pipeline modules that command imports are
derived from the code with ``ast`` (scripts/importgraph.py). ``--fingerprints DIR`` (the
``fingerprints`` stage of dvc.yaml, which depends on the whole package) writes ``DIR/<command>.txt``
for every command a stage runs: each module the command imports with the hash of its content. A
stage depends on its command's file, so a change to a module changes the files of exactly the
commands that import it, and reruns exactly their stages; while dvc.lock lists one file per stage
instead of each of its modules (DVC rewrites the whole of dvc.lock after every stage it runs, so
its length costs every stage of a ``dvc repro``: docs/benchmarks.md).

    python scripts/stage_deps.py                            # print each stage's deps, and what differs
    python scripts/stage_deps.py --write                    # put them in dvc.yaml (only deps lists change)
    python scripts/stage_deps.py --fingerprints fingerprints  # what the fingerprints stage runs

tests/test_dvc_deps.py fails when a stage's deps miss its command's fingerprint.
"""
from __future__ import annotations

import argparse
import hashlib
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts.importgraph import ImportGraph, dep_paths, load_stages  # noqa: E402

FINGERPRINTS = "fingerprints"  # the folder, relative to the project, as dvc.yaml names it


def fingerprint_path(command: str) -> str:
    return f"{FINGERPRINTS}/{command}.txt"


def is_code(dep: str, package: str) -> bool:
    return dep == package or dep.startswith(package + "/") or dep.startswith(FINGERPRINTS + "/")


def commands(graph: ImportGraph, stages: dict) -> dict[str, str]:
    """stage -> the pipeline command it runs (stages that run none are left out)."""
    out = {}
    for name, stage in stages.items():
        command = graph.stage_command(stage["cmd"])
        if command is not None:
            out[name] = command
    return out


def fingerprint(graph: ImportGraph, command: str) -> str:
    """Every module ``command`` imports, one per line: the sha256 of its content and its path."""
    lines = [f"{hashlib.sha256((graph.root / m).read_bytes()).hexdigest()}  {m}"
             for m in sorted(graph.command_closure(command))]
    return f"# the modules `python -m {graph.package} {command}` imports (scripts/stage_deps.py)\n" + "\n".join(lines) + "\n"


def write_fingerprints(graph: ImportGraph, stages: dict, folder: Path) -> list[Path]:
    """Write each command's file into ``folder`` (unchanged files are not touched); remove the files
    of commands no stage runs. Returns the files written."""
    folder.mkdir(parents=True, exist_ok=True)
    wanted = {f"{c}.txt": fingerprint(graph, c) for c in sorted(set(commands(graph, stages).values()))}
    written = []
    for name, text in wanted.items():
        path = folder / name
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            written.append(path)
    for stale in folder.glob("*.txt"):
        if stale.name not in wanted:
            stale.unlink()
    return written


def wanted_deps(graph: ImportGraph, stages: dict) -> dict[str, list[str]]:
    """stage -> the deps it should list: its data and model deps as they are, then its command's
    fingerprint in place of any code."""
    return {name: [d for d in dep_paths(stages[name]) if not is_code(d, graph.package)] + [fingerprint_path(command)]
            for name, command in commands(graph, stages).items()}


def rewrite(text: str, wanted: dict[str, list[str]]) -> str:
    """dvc.yaml's text with each stage's ``deps:`` list replaced (everything else kept as is)."""
    lines = text.splitlines(keepends=True)
    out, stage, i = [], None, 0
    while i < len(lines):
        line = lines[i]
        m = re.match(r"^  ([A-Za-z0-9_-]+):\s*$", line)
        if m:
            stage = m.group(1)
        elif re.match(r"^\S", line):
            stage = None
        out.append(line)
        i += 1
        d = re.match(r"^(\s+)deps:\s*$", line)
        if d and stage in wanted:
            while i < len(lines) and re.match(r"^\s+- ", lines[i]):
                indent = re.match(r"^(\s+)- ", lines[i]).group(1)
                i += 1
            out += [f"{indent}- {dep}\n" for dep in wanted[stage]]
    return "".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dvc-yaml", type=Path, default=ROOT / "dvc.yaml")
    p.add_argument("--write", action="store_true", help="rewrite the deps lists of dvc.yaml in place")
    p.add_argument("--fingerprints", type=Path, metavar="DIR", help="write each command's fingerprint into DIR")
    args = p.parse_args(argv)
    root = args.dvc_yaml.resolve().parent
    graph = ImportGraph(root)
    stages = load_stages(args.dvc_yaml)
    if args.fingerprints:
        folder = args.fingerprints if args.fingerprints.is_absolute() else root / args.fingerprints
        for path in write_fingerprints(graph, stages, folder):
            print(f"updated {path.relative_to(root)}")
        return 0
    found = wanted_deps(graph, stages)
    if args.write:
        import yaml

        text = args.dvc_yaml.read_text(encoding="utf-8")
        new = rewrite(text, found)
        expected = yaml.safe_load(text)
        for s, deps in found.items():
            expected["stages"][s]["deps"] = deps
        if yaml.safe_load(new) != expected:
            raise SystemExit("error: could not rewrite the deps lists of dvc.yaml; edit them by hand")
        args.dvc_yaml.write_text(new, encoding="utf-8")
    for name, deps in found.items():
        now = dep_paths(stages[name])
        print(f"{name}:\n  deps:")
        print("".join(f"    - {d}\n" for d in deps), end="")
        if not args.write and now != deps:
            print(f"  # dvc.yaml lists now: {', '.join(now)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
