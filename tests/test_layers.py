"""The package stands on floors: a module imports only modules on lower floors, so no import goes
up and no circle can form. Checked on the source with `ast` (nothing is imported), counting every
import of an avae module at any depth, including inside functions, where none is allowed either.

A new module must be given a floor here; a module that needs one on its own floor or above it
means the layering has to be rethought (or the module moved), not this table silently widened.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

PACKAGE = "avae"
PACKAGE_DIR = Path(__file__).resolve().parent.parent / PACKAGE

# Lowest first. `version` holds __version__ on the ground floor; `__init__` (the package's public
# API, `avae.__all__`) stands on the top floor beside cli. Departures from the first sketch of this
# table, each forced by the real imports and each keeping the layering strict:
# - errors has a floor of its own under io (io raises avae.errors' exceptions);
# - sources (where the raw data files come from) takes data's place beside nets and objectives, and
#   data moves up one floor beside models and checkpoint (data imports sources, sources imports io);
# - bench sits with reproduce and report, under cli (cli runs `avae bench`); bench_gpu one floor
#   above it (it reuses bench's bf16 accuracy check);
# - scoring (the estimators' drivers, used by evaluate, train and bench) shares the floor of runs.
# - costs (the cost model of a planned run) has a floor of its own, above plan, whose runs it prices.
# - sweep (a grid of runs on reproduce's executors) has a floor of its own, above reproduce, under cli.
FLOORS: tuple[tuple[str, ...], ...] = (
    ("version", "watchdog"),  # watchdog: a process of its own, which imports nothing of avae
    ("errors",),
    ("io", "stats", "bench_report"),
    ("nets", "objectives", "sources", "graphs", "userdata"),
    ("data", "models", "checkpoint"),
    ("config", "figures", "paper", "estimators"),
    ("runs", "scoring"),
    ("card",),
    ("evaluate", "analysis", "results"),
    ("train", "claims", "findings", "plan"),
    ("costs",),
    ("runner", "report", "bench", "api"),
    ("reproduce", "publish", "bench_gpu"),
    ("sweep",),
    ("parser",),
    ("cli", "__init__"),
    ("__main__",),
)
# Imports allowed between two modules of the same floor, as (importer, imported). Kept empty.
SAME_FLOOR_ALLOWED: frozenset[tuple[str, str]] = frozenset()


def package_sources(directory: Path = PACKAGE_DIR) -> dict[str, str]:
    """Module name (file stem) -> source text of every avae/*.py."""
    return {path.stem: path.read_text(encoding="utf-8") for path in sorted(directory.glob("*.py"))}


def _target(dotted: str) -> str | None:
    """The avae module a dotted name refers to: "avae.models.X" -> "models", "avae" -> "__init__";
    None for anything outside the package."""
    parts = dotted.split(".")
    if parts[0] != PACKAGE:
        return None
    if len(parts) == 1:
        return "__init__"
    return parts[1]


def _function_nodes(tree: ast.AST) -> set[int]:
    """ids of every node that lies inside a function or lambda body."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            for child in ast.walk(node):
                if child is not node:
                    inside.add(id(child))
    return inside


def avae_imports(
    source: str, modules: Iterable[str], filename: str = "<source>"
) -> list[tuple[str, int, bool]]:
    """Every import of an avae module in `source`, at any depth: (module, line, inside a function).

    Counted: `import avae`, `import avae.x`, `from avae.x import y`, `from avae import x` (x a
    module, else the package itself), relative imports (`from . import x`, `from .x import y`),
    and `importlib.import_module("avae.x")` with a constant name."""
    modules = set(modules)
    tree = ast.parse(source, filename=filename)
    in_function = _function_nodes(tree)
    found: list[tuple[str, int, bool]] = []

    def add(target: str | None, node: ast.AST) -> None:
        if target is not None:
            found.append((target, node.lineno, id(node) in in_function))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(_target(alias.name), node)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative to the package (avae has no subpackages)
                base = f"{PACKAGE}.{base}" if base else PACKAGE
            if base == PACKAGE:
                for alias in node.names:
                    add(alias.name if alias.name in modules else "__init__", node)
            else:
                add(_target(base), node)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, (ast.Attribute, ast.Name))
            and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            add(_target(node.args[0].value), node)
    return found


def find_cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The import circles of `graph` (module -> modules it imports), one per strongly connected
    component of more than one module (or a module importing itself), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:  # Tarjan's algorithm
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for succ in graph.get(node, ()):
            if succ not in graph:
                continue
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(cycles)


def layering_violations(
    sources: Mapping[str, str],
    floors: Sequence[Sequence[str]] = FLOORS,
    same_floor_allowed: Iterable[tuple[str, str]] = SAME_FLOOR_ALLOWED,
) -> list[str]:
    """Everything wrong with `sources` (module -> source) against `floors` (lowest first): modules
    without a floor, table entries without a module, imports of unknown avae modules, imports that
    go up or sideways, avae imports inside functions, and import circles."""
    floor_of: dict[str, int] = {}
    problems: list[str] = []
    for level, names in enumerate(floors):
        for name in names:
            if name in floor_of:
                problems.append(f"{name}: placed on floors {floor_of[name]} and {level}")
            floor_of[name] = level
    allowed = set(same_floor_allowed)
    modules = set(sources)
    problems += [f"{name}: no floor in the table; place it" for name in sorted(modules - set(floor_of))]
    problems += [f"{name}: in the table but no such module" for name in sorted(set(floor_of) - modules)]
    graph: dict[str, set[str]] = {}
    for name in sorted(sources):
        graph[name] = set()
        for target, line, in_function in avae_imports(sources[name], modules, f"{PACKAGE}/{name}.py"):
            where = f"{name}.py:{line}"
            if target == name:
                continue
            if in_function:
                problems.append(f"{where}: imports avae.{target} inside a function; import at module level")
            if target not in modules:
                problems.append(f"{where}: imports avae.{target}, which does not exist")
                continue
            graph[name].add(target)
            if name not in floor_of or target not in floor_of:
                continue
            mine, theirs = floor_of[name], floor_of[target]
            if theirs > mine:
                problems.append(f"{where}: upward import of {target} (floor {theirs}) from floor {mine}")
            elif theirs == mine and (name, target) not in allowed:
                problems.append(f"{where}: same-floor import of {target} (floor {mine}) not allowed")
    problems += [f"import circle: {' -> '.join(cycle)}" for cycle in find_cycles(graph)]
    return problems


# --- the package ----------------------------------------------------------------------------------


def test_package_is_strictly_layered():
    sources = package_sources()
    assert len(sources) > 10, f"no package sources found in {PACKAGE_DIR}"
    assert layering_violations(sources) == []


def test_every_module_has_a_floor():
    placed = {name for floor in FLOORS for name in floor}
    assert set(package_sources()) <= placed, "place every new avae module on a floor in FLOORS"


def test_no_avae_import_inside_functions():
    sources = package_sources()
    late = [
        f"{name}.py:{line} imports avae.{target}"
        for name, source in sources.items()
        for target, line, in_function in avae_imports(source, sources)
        if in_function
    ]
    assert late == []


def test_the_version_imports_nothing_from_avae():
    sources = package_sources()
    assert avae_imports(sources["version"], sources) == []


def test_every_public_name_is_exported_and_documented():
    import avae

    for name in avae.__all__:
        assert hasattr(avae, name), name
        value = getattr(avae, name)
        if callable(value) and name != "__version__":
            assert (value.__doc__ or "").strip(), f"avae.{name} has no docstring"


def test_same_floor_exceptions_are_none():
    assert SAME_FLOOR_ALLOWED == frozenset()


def test_imports_are_actually_found():
    # guards against a checker that sees nothing: some real edges must be there
    sources = package_sources()
    edges = {(name, t) for name, s in sources.items() for t, _, _ in avae_imports(s, sources)}
    assert {("models", "nets"), ("config", "models"), ("__main__", "cli"), ("config", "version")} <= edges


# --- the checker on synthetic packages --------------------------------------------------------------

FAKE_FLOORS = (("__init__",), ("errors",), ("nets",), ("models",), ("cli",))


def fake_package(**overrides: str) -> dict[str, str]:
    sources = {
        "__init__": '"""root"""\n__version__ = "0"\n',
        "errors": "class AvaeError(Exception):\n    pass\n",
        "nets": "from avae.errors import AvaeError\n",
        "models": "from avae import nets\nfrom avae.errors import AvaeError\n",
        "cli": "import avae\nimport avae.models\nfrom avae.models import X\n",
    }
    sources.update(overrides)
    return sources


def test_checker_accepts_a_layered_package():
    assert layering_violations(fake_package(), FAKE_FLOORS) == []


def test_checker_reports_an_upward_import():
    sources = fake_package(nets="from avae.errors import AvaeError\nfrom avae.models import Model\n")
    problems = layering_violations(sources, FAKE_FLOORS)
    assert any(p.startswith("nets.py:2: upward import of models") for p in problems), problems
    assert any("import circle: models -> nets" in p for p in problems), problems


def test_checker_reports_upward_imports_in_every_form():
    forms = [
        "import avae.cli",
        "import avae.cli as c",
        "from avae import cli",
        "from avae.cli import main",
        "from . import cli",
        "from .cli import main",
        "import importlib\nimportlib.import_module('avae.cli')",
        "if True:\n    from avae.cli import main",
    ]
    for form in forms:
        problems = layering_violations(fake_package(errors=form + "\n"), FAKE_FLOORS)
        assert any("errors.py" in p and "upward import of cli" in p for p in problems), (form, problems)


def test_checker_reports_imports_inside_functions_and_upward():
    source = "def late():\n    from avae.cli import main\n    return main\n"
    problems = layering_violations(fake_package(models=source), FAKE_FLOORS)
    assert "models.py:2: imports avae.cli inside a function; import at module level" in problems
    assert "models.py:2: upward import of cli (floor 4) from floor 3" in problems
    # third-party imports inside functions are fine
    assert layering_violations(fake_package(models="def f():\n    import numpy\n"), FAKE_FLOORS) == []


def test_checker_reports_same_floor_imports_unless_allowed():
    floors = (("__init__",), ("errors",), ("nets", "models"), ("cli",))
    problems = layering_violations(fake_package(), floors)
    assert problems == ["models.py:1: same-floor import of nets (floor 2) not allowed"]
    assert layering_violations(fake_package(), floors, {("models", "nets")}) == []


def test_checker_reports_circles_even_where_same_floor_imports_are_allowed():
    floors = (("__init__",), ("errors",), ("nets", "models"), ("cli",))
    sources = fake_package(nets="from avae import models\n")
    problems = layering_violations(sources, floors, {("models", "nets"), ("nets", "models")})
    assert problems == ["import circle: models -> nets"]


def test_checker_reports_unplaced_modules_and_stale_entries():
    problems = layering_violations(fake_package(extra="x = 1\n"), FAKE_FLOORS + (("gone",),))
    assert "extra: no floor in the table; place it" in problems
    assert "gone: in the table but no such module" in problems
    problems = layering_violations(fake_package(cli="from avae.missing import y\n"), FAKE_FLOORS)
    assert problems == ["cli.py:1: imports avae.missing, which does not exist"]


def test_the_root_may_not_import_the_package():
    problems = layering_violations(fake_package(__init__="from avae.errors import AvaeError\n"), FAKE_FLOORS)
    assert "__init__.py:1: upward import of errors (floor 1) from floor 0" in problems
