"""What each DVC stage depends on besides its data and models: one fingerprint file per pipeline
command (and per model family, where the command reads a family's params).

A stage runs ``python -m pipeline <command>``; the pipeline modules that command imports are
derived from the code with ``ast`` (scripts/importgraph.py), and the params it reads are listed in
dvc.yaml under the stage's ``meta: {params: [...]}`` (dotted keys of params.yaml, as DVC's own
``params:`` would name them; ``${item.family}`` stands for the stage's family). ``--fingerprints
DIR`` (the ``fingerprints`` stage of dvc.yaml, which depends on the whole package and on
params.yaml) writes ``DIR/<command>.txt``, or ``DIR/<command>-<family>.txt`` for each family of its
stages' matrix where its params name one: the value of each param it reads, then each module it
imports with the hash of its content. A stage depends on its file, so a change to a module or to a
param reruns exactly the stages that import or read it; while dvc.lock records one file per stage
instead of each module and each param's value (DVC reads dvc.lock on every ``dvc repro`` and
rewrites the whole of it after every stage it runs, so its length costs every stage:
docs/benchmarks.md). The top-level ``params: [params.yaml]`` of dvc.yaml keeps every param in ``dvc
exp show`` and ``dvc params diff``.

    python scripts/stage_deps.py                            # print each stage's deps, and what differs
    python scripts/stage_deps.py --write                    # put them in dvc.yaml (only deps lists change)
    python scripts/stage_deps.py --fingerprints fingerprints  # what the fingerprints stage runs

tests/test_dvc_deps.py fails when a stage's deps miss its command's fingerprint.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts.importgraph import ImportGraph, dep_paths, load_stages  # noqa: E402

FINGERPRINTS = "fingerprints"  # the folder, relative to the project, as dvc.yaml names it
FAMILY = "${item.family}"  # in a stage's meta params and its fingerprint's path: the stage's family
ABSENT = object()  # a key params.yaml does not hold


def fingerprint_path(command: str, per_family: bool = False) -> str:
    """The fingerprint a stage running ``command`` lists, as dvc.yaml spells it."""
    return f"{FINGERPRINTS}/{command}-{FAMILY}.txt" if per_family else f"{FINGERPRINTS}/{command}.txt"


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


def stage_params(stage: dict) -> list[str]:
    """The params a stage's command reads: its ``meta: {params: [...]}``."""
    return list((stage.get("meta") or {}).get("params") or [])


def command_params(graph: ImportGraph, stages: dict) -> dict[str, list[str]]:
    """command -> the params it reads; every stage that runs one command must list the same."""
    out: dict[str, list[str]] = {}
    for name, command in commands(graph, stages).items():
        keys = stage_params(stages[name])
        if out.setdefault(command, keys) != keys:
            raise SystemExit(f"error: dvc.yaml: the stages running `{command}` list different meta params")
    return out


def lookup(params: dict, key: str):
    """The value of a dotted key of params.yaml, or ``ABSENT``."""
    node = params
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return ABSENT
        node = node[part]
    return node


def stage_families(stage: dict, params: dict) -> list[str]:
    """The families of a stage's ``matrix: {family: ...}`` (a list, or ``${key}`` of params.yaml)."""
    axis = (stage.get("matrix") or {}).get("family")
    if isinstance(axis, str) and axis.startswith("${") and axis.endswith("}"):
        axis = lookup(params, axis[2:-1])
    return [str(f) for f in axis] if isinstance(axis, list) else []


def module_hashes(graph: ImportGraph, command: str) -> str:
    """Every module ``command`` imports, one per line: the sha256 of its content and its path."""
    return "".join(f"{hashlib.sha256((graph.root / m).read_bytes()).hexdigest()}  {m}\n"
                   for m in sorted(graph.command_closure(command)))


def fingerprint(graph: ImportGraph, command: str, values: dict | None = None, modules: str | None = None) -> str:
    """The params ``command`` reads with their values (``values``: key -> value), then its
    ``module_hashes`` (``modules``, where the caller has them already)."""
    head = f"# what `python -m {graph.package} {command}` reads: params.yaml's keys, then its modules (scripts/stage_deps.py)\n"
    shown = "".join(f"# {k}: absent from params.yaml\n" if v is ABSENT
                    else f"{k}: {json.dumps(v, sort_keys=True, default=str)}\n" for k, v in (values or {}).items())
    return head + shown + (modules if modules is not None else module_hashes(graph, command))


def wanted_fingerprints(graph: ImportGraph, stages: dict, params: dict) -> dict[str, str]:
    """file name -> content of every fingerprint the stages read."""
    keys_of = command_params(graph, stages)
    runs = commands(graph, stages)
    wanted = {}
    for command, keys in sorted(keys_of.items()):
        modules = module_hashes(graph, command)  # once per command, whatever its families
        if not any(FAMILY in k for k in keys):
            wanted[f"{command}.txt"] = fingerprint(graph, command, {k: lookup(params, k) for k in keys}, modules)
            continue
        families = sorted({f for name, c in runs.items() if c == command for f in stage_families(stages[name], params)})
        for family in families:
            values = {k.replace(FAMILY, family): lookup(params, k.replace(FAMILY, family)) for k in keys}
            wanted[f"{command}-{family}.txt"] = fingerprint(graph, command, values, modules)
    return wanted


def write_fingerprints(graph: ImportGraph, stages: dict, folder: Path, params: dict | None = None) -> list[Path]:
    """Write each fingerprint into ``folder`` (unchanged files are not touched); remove the files
    no stage reads. ``params``: params.yaml's content. Returns the files written."""
    folder.mkdir(parents=True, exist_ok=True)
    wanted = wanted_fingerprints(graph, stages, params or {})
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
    return {name: [d for d in dep_paths(stages[name]) if not is_code(d, graph.package)]
            + [fingerprint_path(command, any(FAMILY in k for k in stage_params(stages[name])))]
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
    p.add_argument("--params", type=Path, help="the params file the stages read (default: params.yaml beside dvc.yaml)")
    args = p.parse_args(argv)
    root = args.dvc_yaml.resolve().parent
    graph = ImportGraph(root)
    stages = load_stages(args.dvc_yaml)
    if args.fingerprints:
        import yaml

        folder = args.fingerprints if args.fingerprints.is_absolute() else root / args.fingerprints
        params_file = args.params or root / "params.yaml"
        try:
            params = yaml.safe_load(params_file.read_text(encoding="utf-8")) if params_file.exists() else {}
        except yaml.YAMLError as err:
            raise SystemExit(f"error: {params_file}: not valid YAML: {err}") from None
        if params is not None and not isinstance(params, dict):
            raise SystemExit(f"error: {params_file}: expected a mapping of params, found {type(params).__name__}")
        for path in write_fingerprints(graph, stages, folder, params or {}):
            print(f"updated {path.relative_to(root) if path.is_relative_to(root) else path}")
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
