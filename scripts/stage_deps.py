"""Print, per stage of dvc.yaml, the deps it should list: its data and model deps as they are, then
the pipeline modules that its command imports (tests/importgraph.py derives them with ``ast``; a
subpackage directory stands for its modules when the stage imports every one of them).

    python scripts/stage_deps.py           # print the deps blocks, with what differs from dvc.yaml
    python scripts/stage_deps.py --write   # put them in dvc.yaml (only the deps lists change)

tests/test_dvc_deps.py fails when a stage's deps miss a module that it imports.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.importgraph import ImportGraph, covered_by, dep_paths, load_stages  # noqa: E402


def is_code(dep: str, package: str) -> bool:
    return dep == package or dep.startswith(package + "/")


def wanted_deps(graph: ImportGraph, stages: dict) -> dict[str, tuple[list[str], list[str], list[str]]]:
    """stage -> (the deps it should list, modules its deps miss now, code deps that cover no module it imports)."""
    out = {}
    for name, stage in stages.items():
        command = graph.stage_command(stage["cmd"])
        if command is None:
            continue
        closure = graph.command_closure(command)
        deps = dep_paths(stage)
        code = graph.minimal_deps(closure)
        missing = sorted(m for m in closure if not covered_by(m, deps))
        unused = [d for d in deps if is_code(d, graph.package) and not any(covered_by(m, [d]) for m in closure)]
        out[name] = ([d for d in deps if not is_code(d, graph.package)] + code, missing, unused)
    return out


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
    args = p.parse_args(argv)
    graph = ImportGraph(args.dvc_yaml.resolve().parent)
    stages = load_stages(args.dvc_yaml)
    found = wanted_deps(graph, stages)
    if args.write:
        import yaml

        text = args.dvc_yaml.read_text(encoding="utf-8")
        new = rewrite(text, {s: deps for s, (deps, _, _) in found.items()})
        expected = yaml.safe_load(text)
        for s, (deps, _, _) in found.items():
            expected["stages"][s]["deps"] = deps
        if yaml.safe_load(new) != expected:
            raise SystemExit("error: could not rewrite the deps lists of dvc.yaml; edit them by hand")
        args.dvc_yaml.write_text(new, encoding="utf-8")
    for name, (deps, missing, unused) in found.items():
        print(f"{name}:\n  deps:")
        print("".join(f"    - {d}\n" for d in deps), end="")
        if missing:
            print(f"  # {'was' if args.write else 'now'} missing: {', '.join(missing)}")
        if unused:
            print(f"  # {'was' if args.write else 'now'} listed, imports nothing under it: {', '.join(unused)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
