"""The import graph of the project's packages, read statically (ast): every `import` counts,
also those inside functions, so a cycle cannot hide behind a local import. Fails on a cycle
and when head2toe/ imports Ray or MLflow (docs: DESIGN.md, layout table). Takes < 1 s."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("head2toe", "orchestrator", "jobs", "analysis", "benchmarks")
# what a package must never import (DESIGN.md's layout table)
# (and what each package's docstring says)
FORBIDDEN = {"head2toe": ("ray", "mlflow", "orchestrator", "jobs", "analysis"), "orchestrator": ("analysis", "jobs"),
             "analysis": ("ray", "orchestrator", "jobs"), "benchmarks": ("analysis", "jobs")}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every name `name` imports, resolved to a module where it is one (`from a import b`: a.b
    when that is a module, else a); absolute names outside the project are kept as they are."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in modules else base)
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (anywhere in its body; head2toe's lazy API
    table too, since using a name imports its module)."""
    import head2toe

    modules = _modules()
    graph = {m: {i for i in _imports(m, p, modules) if i in modules and i != m} for m, p in modules.items()}
    graph["head2toe"] |= set(head2toe._API)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Top-level package -> the other top-level packages it imports."""
    out: dict[str, set[str]] = {p: set() for p in PACKAGES}
    for m, deps in graph.items():
        out[m.split(".")[0]].update(d.split(".")[0] for d in deps if d.split(".")[0] != m.split(".")[0])
    return out


def test_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 80  # every package was read
    assert cycles(graph) == []


def test_cycle_finder_sees_a_local_import(tmp_path):
    """The finder itself: a cycle made by an import inside a function is a cycle."""
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    (tmp_path / "m.py").write_text("def f():\n    from pkg import n\n")
    assert _imports("pkg.m", tmp_path / "m.py", {"pkg.m": tmp_path / "m.py", "pkg.n": tmp_path / "n.py"}) == {"pkg.n"}


def test_packages_import_only_what_they_may():
    modules = _modules()
    for name, path in modules.items():
        banned = FORBIDDEN.get(name.split(".")[0], ())
        bad = sorted(i for i in _imports(name, path, modules) if i.split(".")[0] in banned)
        assert not bad, f"{name} imports {bad}"


def test_package_graph_has_no_cycle():
    graph = package_graph(import_graph())
    assert cycles(graph) == [], graph
    assert graph["head2toe"] == set()


def test_head2toe_api_is_whole_and_its_import_light():
    """Every name of head2toe.__all__ resolves; `import head2toe` alone loads no PyTorch (the
    allocator every `h2t` command starts with imports it)."""
    import subprocess
    import sys

    import head2toe

    for name in head2toe.__all__:
        assert getattr(head2toe, name) is not None, name
    out = subprocess.run([sys.executable, "-c", "import sys, head2toe, head2toe.allocator; print('torch' in sys.modules)"],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"
