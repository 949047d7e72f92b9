"""Which ``pipeline/`` modules each DVC stage runs, derived statically (``ast``, nothing imported).

A stage's cmd is ``python -m pipeline <command> ...``. That runs ``pipeline/__init__.py``,
``pipeline/__main__.py`` and ``pipeline/cli.py``; cli.py imports most modules lazily, inside the
function that handles each command, so the closure of a command is:

* the imports at module level of cli.py and the imports inside the cli functions that every
  command runs (those reachable from the entry point that ``__main__.py`` imports, ``main``);
* the imports inside the command's handler (the function that ``build_parser`` binds with
  ``set_defaults(func=...)`` to the command's subparser) and inside the cli functions it uses;
* then, transitively, every import (module level or inside a function) of each pipeline module
  reached. ``import pipeline.a.b`` runs ``pipeline/__init__.py``, ``pipeline/a/__init__.py`` and
  ``pipeline/a/b.py``; ``from pipeline.a import b`` also imports ``pipeline/a/b.py`` when ``b``
  is a submodule.

Used by scripts/stage_deps.py (which writes each command's fingerprint and the deps dvc.yaml should
list). The one assumption about cli.py: commands are registered as ``<x>.add_parser(NAME, ...)``
with ``.set_defaults(func=HANDLER)`` on the result (chained, or through a variable), NAME and
HANDLER being literals or names bound by ``for`` loops over literal tuples.
"""
from __future__ import annotations

import ast
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "pipeline"
CLI = f"{PACKAGE}/cli.py"
MAIN = f"{PACKAGE}/__main__.py"
_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


class ImportGraph:
    def __init__(self, root: Path = ROOT, package: str = PACKAGE):
        self.root = Path(root)
        self.package = package
        self._trees: dict[str, ast.Module] = {}
        self._imports: dict[str, set[str]] = {}
        self._handlers: dict[str, str] | None = None

    # -- files ------------------------------------------------------------------------------------

    def tree(self, rel: str) -> ast.Module:
        if rel not in self._trees:
            path = self.root / rel
            self._trees[rel] = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        return self._trees[rel]

    def _module_file(self, dotted: str) -> tuple[str | None, bool]:
        """(file that importing ``dotted`` runs itself, whether it exists as a module or package)."""
        rel = dotted.replace(".", "/")
        if (self.root / rel / "__init__.py").is_file():
            return f"{rel}/__init__.py", True
        if (self.root / f"{rel}.py").is_file():
            return f"{rel}.py", True
        return None, (self.root / rel).is_dir()  # a namespace package runs no file of its own

    def resolve(self, dotted: str) -> set[str]:
        """The files that ``import dotted`` runs: each package on the way, then the module."""
        files: set[str] = set()
        parts = dotted.split(".")
        if parts[0] != self.package:
            return files
        for i in range(1, len(parts) + 1):
            f, exists = self._module_file(".".join(parts[:i]))
            if not exists:
                break
            if f:
                files.add(f)
        return files

    # -- imports ----------------------------------------------------------------------------------

    def _package_of(self, rel: str) -> list[str]:
        parts = rel[:-3].split("/")
        return parts[:-1]  # __init__.py's package is its own directory, like any module's

    def imports_in(self, rel: str, nodes) -> set[str]:
        """The pipeline files that the import statements among ``nodes`` (of module ``rel``) run."""
        files: set[str] = set()
        for node in nodes:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    files |= self.resolve(alias.name)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = self._package_of(rel)
                    base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                files |= self.resolve(module)
                for alias in node.names:
                    if alias.name != "*" and self._module_file(f"{module}.{alias.name}")[1]:
                        files |= self.resolve(f"{module}.{alias.name}")
            elif isinstance(node, ast.Call) and _is_import_module(node):
                files |= self.resolve(node.args[0].value)
        return files

    def module_imports(self, rel: str) -> set[str]:
        """Every import of the module, at module level or inside any function or class."""
        if rel not in self._imports:
            self._imports[rel] = self.imports_in(rel, ast.walk(self.tree(rel)))
        return self._imports[rel]

    def closure(self, start: set[str], done: set[str] = frozenset()) -> set[str]:
        """``start`` and every pipeline module they import, transitively (``done``: not followed)."""
        seen = set(done) | set(start)
        todo = [m for m in start if m not in done]
        while todo:
            for m in self.module_imports(todo.pop()):
                if m not in seen:
                    seen.add(m)
                    todo.append(m)
        return seen

    # -- the CLI ----------------------------------------------------------------------------------

    def cli_defs(self) -> dict[str, ast.AST]:
        return {n.name: n for n in self.tree(CLI).body if isinstance(n, _DEFS)}

    def handlers(self) -> dict[str, str]:
        """Command name -> the cli.py function that handles it, from the argparse set-up."""
        if self._handlers is None:
            self._handlers = {}
            for d in self.cli_defs().values():
                _scan(d.body, {}, {}, self._handlers)
        return dict(self._handlers)

    def entry_points(self) -> set[str]:
        """The cli.py functions that ``__main__.py`` imports (``main``)."""
        names = {a.asname or a.name for n in ast.walk(self.tree(MAIN)) if isinstance(n, ast.ImportFrom)
                 and n.module == f"{self.package}.cli" for a in n.names}
        return names & set(self.cli_defs()) or {"main"}

    def _cli_reach(self, start: set[str], handlers: set[str]) -> set[str]:
        """cli.py functions that ``start`` runs: those they call by name, and those they reference
        otherwise (argparse ``type=`` callbacks...) unless the reference is to a command handler,
        which runs only for its own command."""
        defs = self.cli_defs()
        reached, todo = set(), list(start)
        while todo:
            name = todo.pop()
            if name in reached or name not in defs:
                continue
            reached.add(name)
            called = {n.func.id for n in ast.walk(defs[name]) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
            named = {n.id for n in ast.walk(defs[name]) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
            todo += [n for n in defs if n in called or (n in named and n not in handlers)]
        return reached

    def command_closure(self, command: str) -> set[str]:
        """Every pipeline module that ``python -m pipeline <command>`` can import."""
        handlers = self.handlers()
        if command not in handlers:
            raise KeyError(f"{CLI} registers no command {command!r} (found: {', '.join(sorted(handlers))})")
        return self._run_closure({handlers[command]})

    def common_closure(self) -> set[str]:
        """What every command imports (no handler's own imports)."""
        return self._run_closure(set())

    def _run_closure(self, handlers: set[str]) -> set[str]:
        defs = self.cli_defs()
        funcs = self._cli_reach(self.entry_points() | handlers, set(self.handlers().values()))
        nodes = [n for f in funcs for n in ast.walk(defs[f])] + list(_walk_outside_defs(self.tree(CLI)))
        start = self.resolve(f"{self.package}.__main__") | self.imports_in(CLI, nodes)
        # __main__.py imports cli.py, which is followed only as far as the command goes.
        return self.closure(start - {CLI}, done={CLI}) | {CLI}

    # -- dvc.yaml ---------------------------------------------------------------------------------

    def stage_command(self, cmd) -> str | None:
        """The CLI command of a stage cmd ``python -m pipeline [options] <command> ...``; None when
        the cmd does not run the package; ValueError when it does but names no command of cli.py."""
        commands = set(self.handlers())
        for line in [cmd] if isinstance(cmd, str) else list(cmd):
            words = shlex.split(line)
            for i, w in enumerate(words[:-1]):
                if w == "-m" and words[i + 1] == self.package:
                    found = next((x for x in words[i + 2:] if x in commands), None)
                    if found is None:
                        raise ValueError(f"{line!r} names none of the commands found in {CLI}: "
                                         f"{', '.join(sorted(commands)) or 'none'}")
                    return found
        return None


def load_stages(dvc_yaml: Path = ROOT / "dvc.yaml") -> dict[str, dict]:
    import yaml

    return yaml.safe_load(Path(dvc_yaml).read_text(encoding="utf-8"))["stages"]


def dep_paths(stage: dict) -> list[str]:
    return [d if isinstance(d, str) else next(iter(d)) for d in stage.get("deps", [])]


def _is_import_module(node: ast.Call) -> bool:
    f = node.func
    name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
    return (name in ("import_module", "__import__") and bool(node.args)
            and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str))


def _walk_outside_defs(tree: ast.Module):
    """The nodes of a module that run on import (not inside its functions or classes)."""
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        yield node
        if not isinstance(node, _DEFS):
            todo += list(ast.iter_child_nodes(node))


# -- a small interpreter for argparse's set-up in cli.py ------------------------------------------

def _value(node, env):
    """A literal or a name bound by an enclosing ``for`` over literals; else the node itself."""
    while isinstance(node, ast.Name) and node.id in env:
        node = env[node.id]
    return node.value if isinstance(node, ast.Constant) else node


def _bind(target, value, env) -> bool:
    if isinstance(target, ast.Name):
        env[target.id] = value
        return True
    if isinstance(target, (ast.Tuple, ast.List)) and isinstance(value, (ast.Tuple, ast.List)) \
            and len(target.elts) == len(value.elts):
        return all(_bind(t, v, env) for t, v in zip(target.elts, value.elts, strict=True))
    return False


def _is_call(node, attr: str) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == attr


def _scan(stmts, env, parsers, found) -> None:
    for stmt in stmts:
        if isinstance(stmt, _DEFS):
            continue
        if isinstance(stmt, (ast.For, ast.AsyncFor)) and isinstance(stmt.iter, (ast.Tuple, ast.List)):
            for item in stmt.iter.elts:
                inner = dict(env)
                if _bind(stmt.target, item, inner):
                    _scan(stmt.body, inner, parsers, found)
            _scan(stmt.orelse, env, parsers, found)
            continue
        bodies = [getattr(stmt, f) for f in ("body", "orelse", "finalbody") if isinstance(getattr(stmt, f, None), list)]
        bodies += [h.body for h in getattr(stmt, "handlers", [])]
        if bodies:
            _scan([s for b in bodies for s in b], env, parsers, found)
        expr_nodes = [n for n in ast.iter_child_nodes(stmt) if not isinstance(n, ast.stmt)]
        for node in (x for e in expr_nodes for x in ast.walk(e)):
            if _is_call(node, "set_defaults"):
                func = next((k.value for k in node.keywords if k.arg == "func"), None)
                recv = node.func.value
                if _is_call(recv, "add_parser") and recv.args:
                    command = _value(recv.args[0], env)
                elif isinstance(recv, ast.Name):
                    command = parsers.get(recv.id)
                else:
                    command = None
                handler = _value(func, env) if func is not None else None
                if isinstance(command, str) and isinstance(handler, ast.Name):
                    found[command] = handler.id
        if isinstance(stmt, ast.Assign) and _is_call(stmt.value, "add_parser") and stmt.value.args:
            command = _value(stmt.value.args[0], env)
            for t in stmt.targets:
                if isinstance(t, ast.Name):
                    parsers[t.id] = command if isinstance(command, str) else None
