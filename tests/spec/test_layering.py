"""Imports flow one way (spec → target → engine → checks → report), without cycles, and the
spec layer and the pytest plugin never import torch."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import auditor

PACKAGE = Path(auditor.__file__).parent
#: Lower layers may not import higher ones at module level (TYPE_CHECKING and function-level imports excepted).
LAYERS = ["auditor.errors", "auditor.suggest", "auditor.files", "auditor.progress", "auditor.registry",
          "auditor.sampling", "auditor.spec", "auditor.baseline", "auditor.session", "auditor.data", "auditor.fingerprint",
          "auditor.attribution",
          "auditor.checkpoint", "auditor.target", "auditor.engine", "auditor.distributed", "auditor.checks", "auditor.report",
          "auditor.cli", "auditor.plugin", "auditor.api", "auditor.__main__"]
TORCH_FREE = ["auditor.errors", "auditor.suggest", "auditor.files", "auditor.registry", "auditor.spec",
              "auditor.baseline", "auditor.session", "auditor.plugin", "auditor.api"]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def top_level_imports(path: Path) -> set[str]:
    """Modules imported when `path` is imported: module-level statements, not under TYPE_CHECKING."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()

    def visit(nodes):
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, (ast.If, ast.Try)):
                visit(node.body)
                visit(getattr(node, "orelse", []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)
    visit(tree.body)
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in top_level_imports(path) if m in modules and m != name} for name, path in modules.items()}


def layer(module: str) -> int:
    return max(i for i, prefix in enumerate(LAYERS) if module == prefix or module.startswith(prefix + "."))


def assert_acyclic(edges: dict[str, set[str]]) -> None:
    """Depth-first search; an import cycle fails with its path."""
    state: dict[str, int] = {}

    def walk(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(nxt):] + [nxt]))
            if nxt not in state:
                walk(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            walk(node, [node])


def test_no_import_cycle_among_auditor_modules():
    assert_acyclic(graph())


def test_no_import_cycle_among_benchmarks_even_inside_functions():
    """The benchmarks import each other inside functions too (a worker, a shared helper): any cycle counts."""
    folder = PACKAGE.parent / "benchmarks"
    modules = {f"benchmarks.{p.stem}": p for p in folder.glob("*.py") if p.stem != "__init__"}
    edges = {}
    for name, path in modules.items():
        nodes = [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, (ast.Import, ast.ImportFrom))]
        named = {a.name for n in nodes if isinstance(n, ast.Import) for a in n.names}
        named |= {n.module for n in nodes if isinstance(n, ast.ImportFrom) and n.module}
        edges[name] = {m for m in named if m in modules and m != name}
    assert "benchmarks.common" in edges and edges["benchmarks.common"] == set()      # the library imports no benchmark
    assert_acyclic(edges)


def test_imports_flow_one_way():
    backwards = [f"{a} imports {b}" for a, targets in graph().items() for b in targets
                 if "auditor" not in (a, b) and not b.startswith(a) and layer(b) > layer(a)]
    assert not backwards, backwards


def test_spec_and_plugin_modules_import_no_torch_at_module_level():
    offenders = [f"{name} imports {m}" for name, path in ((module_name(p), p) for p in PACKAGE.rglob("*.py"))
                 if any(name == t or name.startswith(t + ".") for t in TORCH_FREE)
                 for m in top_level_imports(path) if m.split(".")[0] in ("torch", "torchvision", "numpy")]
    assert not offenders, offenders


def test_plugin_import_and_collection_without_audit_files_do_not_import_torch(tmp_path):
    (tmp_path / "test_plain.py").write_text("def test_one():\n    assert True\n")
    (tmp_path / "notes.yaml").write_text("a: 1\n")
    script = textwrap.dedent(f"""
        import sys
        import pytest
        import auditor.plugin, auditor.spec, auditor.session
        assert "torch" not in sys.modules, "importing the plugin imported torch"
        code = pytest.main(["-q", "-p", "no:cacheprovider", {str(tmp_path)!r}])
        assert code == 0, code
        print("TORCH LOADED" if "torch" in sys.modules else "TORCH ABSENT")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "TORCH ABSENT" in result.stdout, result.stdout


def test_validating_an_audit_does_not_import_torch(tmp_path):
    path = tmp_path / "audit_x.yaml"
    path.write_text("audit: x\nmodel: {factory: m:f}\ndata: {train: {factory: m:t}, test: {factory: m:t}}\n"
                    "include: [{pack: shortcuts}, {pack: label_noise}]\n")
    script = (f"import sys; from auditor.cli import main; code = main(['validate', {str(path)!r}]); "
              "print('TORCH LOADED' if 'torch' in sys.modules else 'TORCH ABSENT'); sys.exit(code)")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is valid (6 rules)" in result.stdout and "TORCH ABSENT" in result.stdout
