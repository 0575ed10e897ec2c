"""The rooms of docs/architecture.md, checked: the import contracts in pyproject.toml
(``[tool.importlinter]``, run with import-linter) and no import cycles inside ``vigil``.

By hand: ``.venv/bin/lint-imports``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept():
    """Every contract of ``[tool.importlinter]`` holds; a broken one fails with import-linter's
    report: the contract's name and the import chains that break it."""
    run = subprocess.run(
        # Reads [tool.importlinter] from pyproject.toml in the working directory.
        [sys.executable, "-c", "from importlinter.cli import lint_imports_command as c; c()",
         "--no-cache"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    report = run.stdout + run.stderr
    if run.returncode != 0:
        broken = report.find("Broken contracts")
        pytest.fail(report[broken:] if broken >= 0 else report, pytrace=False)
    assert " broken." in report  # "Contracts: N kept, 0 broken."


def strongly_connected_components(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative: the groups of nodes that all reach one another.

    >>> sorted(map(sorted, strongly_connected_components({"a": {"b"}, "b": {"a"}, "c": {"a"}})))
    [['a', 'b'], ['c']]
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    components.append(sorted(component))
    return components


def test_no_import_cycles_between_vigil_modules():
    """No group of ``vigil.*`` modules imports one another in a ring (imports under
    ``if TYPE_CHECKING:`` do not count: they never run)."""
    graph = grimp.build_graph("vigil", exclude_type_checking_imports=True, cache_dir=None)
    edges = {m: graph.find_modules_directly_imported_by(m) & graph.modules
             for m in graph.modules}
    cycles = [c for c in strongly_connected_components(edges)
              if len(c) > 1 or c[0] in edges[c[0]]]
    lines = []
    for cycle in cycles:
        members = set(cycle)
        lines.append("cycle: " + ", ".join(cycle))
        for m in cycle:
            for target in sorted(edges[m] & members):
                details = graph.get_import_details(importer=m, imported=target)
                where = ", ".join(f"line {d['line_number']}" for d in details)
                lines.append(f"    {m} -> {target} ({where})")
    assert not cycles, "\n".join(lines)
