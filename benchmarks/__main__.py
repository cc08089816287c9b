"""The benchmark suite: list the benchmarks, or run one by name with its own arguments.

    python -m benchmarks --list
    python -m benchmarks NAME [ARGS ...]        # the same as python -m benchmarks.NAME [ARGS ...]

A benchmark is a module of this folder with a `main()`; `common` is their shared library and
the workers other benchmarks start in processes of their own are listed apart. Figures go to
`benchmarks/results/*.json` and `benchmarks/RESULTS.md` with the command that produced them.
"""

from __future__ import annotations

import ast
import runpy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORKERS = {"self_influence_peers": "label_errors", "quanda_judge": "efficacy"}   # worker → the benchmark that runs it


def benchmarks() -> dict[str, str]:
    """Name → first line of its docstring, for every module with a `main()` (workers left out)."""
    found = {}
    for path in sorted(HERE.glob("*.py")):
        tree = ast.parse(path.read_text())
        has_main = any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body)
        if path.stem in WORKERS or path.stem.startswith("_") or not has_main:
            continue
        doc = (ast.get_docstring(tree) or "").strip()
        found[path.stem] = doc.splitlines()[0] if doc else ""
    return found


def main(argv: list[str]) -> int:
    suite = benchmarks()
    if not argv or argv[0] in ("--list", "-l", "--help", "-h"):
        width = max(map(len, suite))
        for name, line in suite.items():
            print(f"{name:{width}s}  {line}")
        print("\nworkers (started by a benchmark in a process of their own): "
              + ", ".join(f"{w} (by {b})" for w, b in WORKERS.items()))
        return 0
    name = argv[0]
    if name not in suite:
        print(f"no benchmark named '{name}'; `python -m benchmarks --list` names them", file=sys.stderr)
        return 2
    sys.argv = [f"benchmarks.{name}", *argv[1:]]
    runpy.run_module(f"benchmarks.{name}", run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
