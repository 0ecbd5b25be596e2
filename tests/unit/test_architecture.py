"""The shape of the Python: layers, no cycles, small modules and functions, module-level imports.

Each check runs first on a small package made here with the fault it looks for, so a check that could
never fail is caught too.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("streamflow", "ml", "serving")
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80
LONG_MARK = "# long:"  # a function's first lines may say why it is long

# Where imports inside functions are the rule, and why. Anywhere else each one carries a comment.
LAZY_BY_DESIGN = {
    "streamflow.cli": "`streamflow --help` and light commands must not import dbt, Feast, MLflow, Evidently",
    "streamflow.pipeline": "Airflow imports it whenever it parses the DAG files",
    "streamflow.dag_support": "Airflow imports it whenever it parses the DAG files",
}


# ---------------------------------------------------------------------------------------
# the checks, as functions of a source tree
# ---------------------------------------------------------------------------------------
def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """import-linter's contracts of ``root``'s pyproject.toml, run on the packages under ``root``."""
    exe = Path(sys.executable).with_name("lint-imports")
    return subprocess.run(
        [str(exe), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": str(exe.parent)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def import_cycles(root: Path, packages: tuple[str, ...]) -> list[list[str]]:
    """Every strongly connected set of two or more modules (function-level imports included)."""
    sys.path.insert(0, str(root))
    try:
        graph = grimp.build_graph(*packages, cache_dir=None)
    finally:
        sys.path.remove(str(root))
    modules = sorted(graph.modules)
    edges = {m: sorted(graph.find_modules_directly_imported_by(m) & graph.modules) for m in modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for m in modules:
        if m not in index:
            visit(m)
    return found


def python_files(root: Path, packages: tuple[str, ...]) -> list[Path]:
    return sorted(p for pkg in packages for p in (root / pkg).rglob("*.py"))


def module_name(root: Path, path: Path) -> str:
    return ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")


def oversized(root: Path, packages: tuple[str, ...]) -> list[str]:
    """Modules over the line limit and functions over theirs that do not say why."""
    problems = []
    for path in python_files(root, packages):
        text = path.read_text()
        lines = text.splitlines()
        if len(lines) > MAX_MODULE_LINES:
            problems.append(f"{path.relative_to(root)}: {len(lines)} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                head = "\n".join(lines[node.lineno - 1 : node.body[0].lineno + 2])
                if length > MAX_FUNCTION_LINES and LONG_MARK not in head:
                    problems.append(f"{path.relative_to(root)}:{node.lineno} {node.name}: {length} lines")
    return problems


def unexplained_local_imports(root: Path, packages: tuple[str, ...]) -> list[str]:
    """Imports inside functions, outside the modules where that is the rule, with no comment saying why."""
    problems = []
    for path in python_files(root, packages):
        name = module_name(root, path)
        if any(name == m or name.startswith(m + ".") for m in LAZY_BY_DESIGN):
            continue
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for inner in ast.walk(node):
                if isinstance(inner, ast.Import | ast.ImportFrom):
                    here, above = lines[inner.lineno - 1], lines[inner.lineno - 2].strip()
                    if "#" not in here and not above.startswith("#"):
                        problems.append(f"{path.relative_to(root)}:{inner.lineno}: {here.strip()}")
    return problems


# ---------------------------------------------------------------------------------------
# each check finds the fault it is for
# ---------------------------------------------------------------------------------------
@pytest.fixture
def toy(tmp_path: Path) -> Path:
    """A layered toy project: `top` above `low`, with the same kind of import-linter contract."""
    (tmp_path / "pyproject.toml").write_text(
        textwrap.dedent(
            """
            [tool.importlinter]
            root_packages = ["top", "low"]

            [[tool.importlinter.contracts]]
            name = "toy layers"
            type = "layers"
            layers = ["top", "low"]
            """
        )
    )
    for pkg in ("top", "low"):
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "top" / "a.py").write_text("from low import b\n")
    (tmp_path / "low" / "b.py").write_text("X = 1\n")
    (tmp_path / "low" / "c.py").write_text("Y = 2\n")
    return tmp_path


def test_the_layer_check_finds_an_upward_import_even_inside_a_function(toy):
    assert lint_imports(toy).returncode == 0
    (toy / "low" / "c.py").write_text("def f():\n    from top import a\n    return a\n")
    result = lint_imports(toy)
    assert result.returncode != 0 and "BROKEN" in result.stdout and "low.c -> top.a" in result.stdout


def test_the_cycle_check_finds_a_cycle_through_a_function_level_import(toy):
    assert import_cycles(toy, ("top", "low")) == []
    (toy / "low" / "b.py").write_text("def f():\n    from low import c  # a reason\n    return c\n")
    (toy / "low" / "c.py").write_text("from low import b\n")
    assert import_cycles(toy, ("top", "low")) == [["low.b", "low.c"]]


def test_the_size_check_finds_a_long_function_unless_it_says_why(toy):
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))
    (toy / "low" / "b.py").write_text(f"def long_one():\n{body}")
    assert oversized(toy, ("low",)) == [f"low/b.py:1 long_one: {MAX_FUNCTION_LINES + 1} lines"]
    (toy / "low" / "b.py").write_text(f"def long_one():\n    {LONG_MARK} one table of cases\n{body}")
    assert oversized(toy, ("low",)) == []


def test_the_import_check_finds_an_unexplained_import_inside_a_function(toy):
    (toy / "low" / "b.py").write_text("def f():\n    import json\n    return json\n")
    assert unexplained_local_imports(toy, ("low",)) == ["low/b.py:2: import json"]
    (toy / "low" / "b.py").write_text("def f():\n    import json  # start-up time\n    return json\n")
    assert unexplained_local_imports(toy, ("low",)) == []


# ---------------------------------------------------------------------------------------
# the project keeps its shape
# ---------------------------------------------------------------------------------------
def test_each_layer_imports_only_from_the_layers_below_it():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 1 kept, 0 broken." in result.stdout


def test_no_module_imports_itself_back_through_others():
    assert import_cycles(ROOT, PACKAGES) == []


def test_modules_and_functions_stay_small_enough_to_read():
    assert oversized(ROOT, PACKAGES) == []


def test_imports_inside_functions_say_why():
    assert unexplained_local_imports(ROOT, PACKAGES) == []
