"""The import graph of the first-party packages: acyclic, layered, and light where it must be.

Every import statement of every first-party file is read with ``ast``: at module level,
under ``if TYPE_CHECKING:`` and inside functions. ``from a.b import c`` is an import of
module ``a.b.c`` when that is a module, else of ``a.b``. Third-party imports are leaves.
Importing ``a.b.c`` also runs the ``__init__`` of ``a`` and ``a.b``; the "reach" and
"load" rules count that, the cycle rule does not (Python imports a package before its
submodules, so a package importing its own submodules is no cycle). A violation names the
importing module, the imported one and the file and line of the statement.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIRST_PARTY = ("cli", "bot", "backend", "storage", "config", "migrations")

# --------------------------------------------------------------------------- the graph


class Kind(StrEnum):
    """Where an import statement sits, which decides when it runs."""

    MODULE = "module level"
    TYPE_CHECKING = "under TYPE_CHECKING"
    FUNCTION = "inside a function"
    PACKAGE = "its package's __init__ runs first"


@dataclass(frozen=True, slots=True)
class Import:
    """One edge of the graph: ``importer`` imports ``target`` at ``file``:``line``."""

    importer: str
    target: str
    file: str
    line: int
    kind: Kind
    statement: str

    def describe(self) -> str:
        """The edge in one line: both modules, the statement and where it is."""
        if self.kind is Kind.PACKAGE:
            return f"{self.importer} -> {self.target} ({self.kind})"
        where = f"{self.file}:{self.line}"
        return f"{self.importer} -> {self.target} ({where} `{self.statement}`, {self.kind})"


@dataclass(frozen=True, slots=True)
class ImportGraph:
    """Every module of the scanned packages and every import edge between them and out."""

    packages: tuple[str, ...]
    modules: frozenset[str]
    edges: dict[str, tuple[Import, ...]]

    def is_first_party(self, name: str) -> bool:
        """Whether ``name`` belongs to one of the scanned packages."""
        return name.split(".")[0] in self.packages

    def under(self, prefix: str) -> list[str]:
        """The modules at or below ``prefix``; fails when there are none (a stale rule)."""
        found = sorted(name for name in self.modules if _is_under(name, prefix))
        assert found, f"no module is named {prefix} or lives under it; update the rule"
        return found


def _is_under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


class _Statements(ast.NodeVisitor):
    """Collects every import statement of a module with the kind of place it sits in."""

    def __init__(self) -> None:
        self.found: list[tuple[ast.Import | ast.ImportFrom, Kind]] = []
        self._kind = Kind.MODULE

    def _visit_as(self, nodes: Iterable[ast.AST], kind: Kind) -> None:
        outer, self._kind = self._kind, kind
        for node in nodes:
            self.visit(node)
        self._kind = outer

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self._visit_as(node.body, Kind.FUNCTION)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_If(self, node: ast.If) -> None:
        if self._kind is Kind.MODULE and _is_type_checking(node.test):
            self._visit_as(node.body, Kind.TYPE_CHECKING)
            self._visit_as(node.orelse, self._kind)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.found.append((node, self._kind))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        self.found.append((node, self._kind))


def _discover(root: Path, packages: Sequence[str]) -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def _from_base(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` statement names, relative ones resolved."""
    if node.level == 0:
        return node.module or ""
    package = module if is_package else module.rpartition(".")[0]
    parts = package.split(".")
    base = ".".join(parts[: len(parts) - (node.level - 1)])
    return f"{base}.{node.module}" if node.module else base


def _targets(
    module: str, is_package: bool, node: ast.Import | ast.ImportFrom, modules: Iterable[str]
) -> Iterator[tuple[str, str]]:
    """(imported module, statement text) for each name of one import statement."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.name, f"import {alias.name}"
        return
    base = _from_base(module, is_package, node)
    written = "." * node.level + (node.module or "")
    for alias in node.names:
        candidate = f"{base}.{alias.name}"
        target = candidate if candidate in modules else base
        yield target, f"from {written} import {alias.name}"


def _module_edges(root: Path, module: str, path: Path, modules: frozenset[str]) -> list[Import]:
    statements = _Statements()
    statements.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    is_package = path.name == "__init__.py"
    file = path.relative_to(root).as_posix()
    # One edge per imported module and line: `from a import B, C` is one import of `a`.
    unique: dict[tuple[str, int], Import] = {}
    for node, kind in statements.found:
        for target, text in _targets(module, is_package, node, modules):
            if target != module:
                edge = Import(module, target, file, node.lineno, kind, text)
                unique.setdefault((target, node.lineno), edge)
    edges = list(unique.values())
    parent = module.rpartition(".")[0]
    if parent in modules:
        edges.append(Import(module, parent, file, 0, Kind.PACKAGE, ""))
    return edges


def build_graph(root: Path, packages: Sequence[str]) -> ImportGraph:
    """Read every ``.py`` file of ``packages`` under ``root`` into an import graph."""
    paths = _discover(root, packages)
    modules = frozenset(paths)
    edges = {name: tuple(_module_edges(root, name, path, modules)) for name, path in paths.items()}
    return ImportGraph(tuple(packages), modules, edges)


# --------------------------------------------------------------------------- cycles


def _components(graph: ImportGraph) -> list[list[str]]:
    """Strongly connected components of the explicit first-party edges (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for edge in _explicit(graph, node):
            if edge.target not in index:
                visit(edge.target)
                low[node] = min(low[node], low[edge.target])
            elif edge.target in on_stack:
                low[node] = min(low[node], index[edge.target])
        if low[node] == index[node]:
            component = []
            while (member := stack.pop()) != node:
                on_stack.discard(member)
                component.append(member)
            on_stack.discard(node)
            found.append([node, *component])

    for node in sorted(graph.modules):
        if node not in index:
            visit(node)
    return found


def _explicit(graph: ImportGraph, node: str) -> list[Import]:
    return [
        edge
        for edge in graph.edges.get(node, ())
        if edge.kind is not Kind.PACKAGE and edge.target in graph.modules
    ]


def _shortest_cycle(graph: ImportGraph, start: str, members: set[str]) -> list[Import]:
    """The shortest chain of edges inside ``members`` from ``start`` back to ``start``."""
    came_by: dict[str, Import] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for edge in _explicit(graph, node):
            if edge.target == start:
                chain = [edge]
                while chain[0].importer != start:
                    chain.insert(0, came_by[chain[0].importer])
                return chain
            if edge.target in members and edge.target not in came_by:
                came_by[edge.target] = edge
                queue.append(edge.target)
    raise AssertionError(f"{start} is in a component but on no cycle")


def find_cycles(graph: ImportGraph) -> list[str]:
    """One message per import cycle: the chain of modules, each edge with file and line."""
    messages = []
    for component in _components(graph):
        if len(component) > 1:
            chain = _shortest_cycle(graph, min(component), set(component))
            path = " -> ".join([edge.importer for edge in chain] + [chain[0].importer])
            steps = "\n".join(f"  {edge.describe()}" for edge in chain)
            messages.append(f"import cycle {path}:\n{steps}")
    return messages


# --------------------------------------------------------------------------- layers


@dataclass(frozen=True, slots=True)
class Forbid:
    """Modules under ``importer`` never import anything under one of ``targets``."""

    importer: str
    targets: tuple[str, ...]
    why: str


@dataclass(frozen=True, slots=True)
class Only:
    """Modules under ``importer`` import first-party modules under ``targets`` and nothing else."""

    importer: str
    targets: tuple[str, ...]
    why: str


@dataclass(frozen=True, slots=True)
class Exclusive:
    """Only modules under one of ``importers`` import anything under ``target``."""

    target: str
    importers: tuple[str, ...]
    why: str


Rule = Forbid | Only | Exclusive

LAYERS: tuple[Rule, ...] = (
    Forbid("storage", ("backend", "bot", "cli"), "storage is below the backend"),
    Forbid("backend", ("bot", "cli"), "the backend is below the front ends"),
    Forbid("config", ("backend", "storage", "bot", "cli"), "config is the bottom layer"),
    Forbid("migrations", ("backend", "storage", "bot", "cli", "config"), "migrations are data"),
    Forbid("bot", ("storage", "backend.engine"), "the bot never touches storage or the engine"),
    Only(
        "bot",
        (
            "bot",
            "config",
            # The facade and the torch-free domain its signatures speak in.
            "backend.service",
            "backend.models",
            "backend.errors",
            "backend.events",
            "backend.prompt",
            # Model names and their defaults, for choices and autocomplete (torch-free).
            "backend.catalog",
            # The degradation Level an admin command names (a pure StrEnum module).
            "backend.degrade.ladder",
            # The people side: accounts, moderation, audit, delivery records.
            "backend.community",
            # Admin operations on the running service: pauses, models, statistics.
            "backend.operations",
            # Wall-clock time (token expiry), as the service records it.
            "backend.clock",
        ),
        "the bot talks to the backend through its facade",
    ),
    Exclusive("bot", ("cli", "bot"), "only the composition root builds the bot"),
    Exclusive("cli", ("cli",), "nothing depends on the composition root"),
)


def _breaks(rule: Rule, edge: Import) -> bool:
    if isinstance(rule, Forbid):
        return _is_under(edge.importer, rule.importer) and any(
            _is_under(edge.target, target) for target in rule.targets
        )
    if isinstance(rule, Only):
        return _is_under(edge.importer, rule.importer) and not any(
            _is_under(edge.target, target) for target in rule.targets
        )
    return _is_under(edge.target, rule.target) and not any(
        _is_under(edge.importer, importer) for importer in rule.importers
    )


def layer_violations(graph: ImportGraph, rules: Sequence[Rule]) -> list[str]:
    """One message per first-party import that breaks one of ``rules``."""
    return [
        f"{edge.importer} must not import {edge.target} ({rule.why}): {edge.describe()}"
        for edges in graph.edges.values()
        for edge in edges
        if edge.kind is not Kind.PACKAGE and graph.is_first_party(edge.target)
        for rule in rules
        if _breaks(rule, edge)
    ]


# --------------------------------------------------------------------------- reach


def _next_steps(graph: ImportGraph, node: str, uses: bool) -> Iterator[tuple[Import, bool]]:
    """Edges out of ``node`` and whether the module they reach is used or only loaded.

    A module in use may run any of its imports (function-level ones when called,
    TYPE_CHECKING ones name its types); a module that is only loaded, because it is the
    package of a module in use, runs its module-level imports and nothing else.
    """
    for edge in graph.edges.get(node, ()):
        if edge.kind is Kind.PACKAGE:
            yield edge, False
        elif uses or edge.kind is Kind.MODULE:
            yield edge, uses


State = tuple[str, bool]


def reach_violations(graph: ImportGraph, start: str, leaves: Sequence[str]) -> list[str]:
    """One message per library in ``leaves`` that ``start`` uses or loads, with the chain."""
    came_by: dict[State, tuple[Import, State]] = {}
    queue: deque[State] = deque([(start, True)])
    seen = {queue[0]}
    messages: dict[str, str] = {}
    while queue:
        state = queue.popleft()
        for edge, uses in _next_steps(graph, *state):
            library = edge.target.split(".")[0]
            if graph.is_first_party(edge.target):
                # A module already in use needs no second visit as merely loaded.
                if not {(edge.target, uses), (edge.target, True)} & seen:
                    seen.add((edge.target, uses))
                    came_by[(edge.target, uses)] = (edge, state)
                    queue.append((edge.target, uses))
            elif library in leaves and library not in messages:
                chain = [*_chain_to(came_by, state), edge]
                steps = "\n".join(f"  {step.describe()}" for step in chain)
                messages[library] = f"{start} reaches {library}:\n{steps}"
    return [messages[library] for library in sorted(messages)]


def _chain_to(came_by: dict[State, tuple[Import, State]], state: State) -> list[Import]:
    chain: list[Import] = []
    while state in came_by:
        edge, state = came_by[state]
        chain.insert(0, edge)
    return chain


# --------------------------------------------------------------------------- processes

HEAVY = ("torch", "diffusers", "transformers")

# Pure policy: plain functions and values, unit-testable without a loop, Redis or torch.
POLICY = (
    "backend.scheduling",
    "backend.admission.base",
    "backend.admission.moderation",
    "backend.degrade.ladder",
    "backend.degrade.records",
    "backend.models",
    "backend.prompt",
    "backend.errors",
    "backend.stats",
    # The shapes model's vocabulary, drawn data, scorer and file check: numpy and PIL
    # only (its training and evaluation use torch, and are not policy).
    "backend.shapes.vocab",
    "backend.shapes.draw",
    "backend.shapes.score",
    "backend.shapes.shipped",
)
POLICY_NEVER_REACHES = (*HEAVY, "redis", "discord")

# Modules a process without a GPU imports; checked in a real interpreter.
TORCH_FREE = [
    "bot",
    "cli",
    "cli.generate",
    "cli.admin",
    "cli.shapes",
    "config",
    "config.settings",
    "config.logging",
    "storage",
    "storage.db",
    "storage.errors",
    "storage.images",
    "storage.migrate",
    "storage.repos",
    "storage.repos.base",
    "storage.repos.jobs",
    "storage.repos.moderation",
    "storage.repos.state",
    "storage.repos.users",
    "backend",
    "backend.app",
    "backend.catalog",
    "backend.clock",
    "backend.errors",
    "backend.grid",
    "backend.models",
    "backend.prompt",
    "backend.service",
    "backend.stats",
    "backend.admission",
    "backend.admission.base",
    "backend.admission.limits",
    "backend.admission.memory",
    "backend.admission.redis",
    "backend.degrade",
    "backend.degrade.base",
    "backend.degrade.controller",
    "backend.degrade.ladder",
    "backend.degrade.loadwatch",
    "backend.degrade.memory",
    "backend.degrade.records",
    "backend.degrade.redis",
    "backend.events",
    "backend.events.base",
    "backend.events.memory",
    "backend.queue",
    "backend.queue.base",
    "backend.queue.memory",
    "backend.queue.redis",
    "backend.scheduling",
    "backend.scheduling.eta",
    "backend.scheduling.fairness",
    "backend.scheduling.lanes",
    "backend.scheduling.preemption",
    "backend.worker",
    "backend.worker.worker",
    "backend.worker.ledger",
    "backend.worker.ledger.base",
    "backend.worker.ledger.sqlite",
    "backend.engine.types",
    "backend.engine.source",
    "backend.bench.sim",
    "backend.bench.scheduler",
    "backend.bench.trace",
    "backend.bench.report",
    "backend.bench.admit",
    "backend.bench.classes",
    "backend.bench.device",
    "backend.bench.policies",
    "backend.bench.sweep",
    "backend.bench.sweep_report",
    "backend.shapes",
    "backend.shapes.vocab",
    "backend.shapes.draw",
    "backend.shapes.score",
    "backend.shapes.shipped",
    "backend.shapes.card",
]


def loaded_after_importing(modules: Sequence[str], watched: Sequence[str]) -> list[str]:
    """Import ``modules`` one by one in a fresh interpreter; name which one loaded what.

    Returns ``"module loads library"`` for every watched library a module pulled in.
    """
    code = textwrap.dedent(
        f"""
        import importlib, sys
        for name in {list(modules)!r}:
            before = {{m for m in {list(watched)!r} if m in sys.modules}}
            importlib.import_module(name)
            for m in {list(watched)!r}:
                if m in sys.modules and m not in before:
                    print(name, "loads", m)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


# --------------------------------------------------------------------------- the tree


@pytest.fixture(scope="module")
def graph() -> ImportGraph:
    return build_graph(ROOT, FIRST_PARTY)


def _assert_none(violations: list[str]) -> None:
    """Fail with every violation on its own line (module, import, file and line)."""
    assert not violations, "\n".join(["", *violations])


def test_no_import_cycles(graph: ImportGraph) -> None:
    """No chain of imports (module level, TYPE_CHECKING or in a function) returns to its start."""
    _assert_none(find_cycles(graph))


@pytest.mark.parametrize("rule", LAYERS, ids=lambda rule: f"{type(rule).__name__}-{rule.why}")
def test_layer_rule_holds(graph: ImportGraph, rule: Rule) -> None:
    """No first-party import breaks the rule (cli -> bot -> backend -> storage, config)."""
    _assert_none(layer_violations(graph, [rule]))


def test_policy_never_reaches_torch_redis_or_discord(graph: ImportGraph) -> None:
    """No pure policy module uses or loads torch, diffusers, transformers, redis or discord."""
    starts = [module for prefix in POLICY for module in graph.under(prefix)]
    _assert_none(
        [v for start in starts for v in reach_violations(graph, start, POLICY_NEVER_REACHES)]
    )


def test_worker_and_engine_never_reach_discord(graph: ImportGraph) -> None:
    """No module of the worker or the engine uses or loads discord, by any chain."""
    starts = graph.under("backend.worker") + graph.under("backend.engine")
    _assert_none([v for start in starts for v in reach_violations(graph, start, ("discord",))])


def test_bot_never_reaches_torch(graph: ImportGraph) -> None:
    """No module of the bot uses or loads torch, diffusers or transformers, by any chain."""
    _assert_none([v for start in graph.under("bot") for v in reach_violations(graph, start, HEAVY)])


def test_importing_worker_and_engine_loads_no_discord(graph: ImportGraph) -> None:
    """Importing the worker and every engine module in a fresh interpreter loads no discord."""
    modules = graph.under("backend.worker") + graph.under("backend.engine")
    _assert_none(loaded_after_importing(modules, ("discord",)))


def test_importing_the_bot_loads_no_torch(graph: ImportGraph) -> None:
    """Importing every module of the bot in a fresh interpreter loads no torch."""
    _assert_none(loaded_after_importing(graph.under("bot"), HEAVY))


def test_torch_free_modules_do_not_import_torch(graph: ImportGraph) -> None:
    """Importing the torch-free modules in a fresh interpreter loads no torch."""
    assert set(TORCH_FREE) <= graph.modules, "a torch-free module was renamed; update the list"
    _assert_none(loaded_after_importing(TORCH_FREE, HEAVY))


# --------------------------------------------------------------------------- the checker


def _write_tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")


SYNTHETIC = {
    "pkg/__init__.py": "",
    # a -> b -> c -> a, the last edge inside a function, one through a relative import.
    "pkg/a.py": "from . import b\n",
    "pkg/b.py": "def later():\n    from pkg.c import thing\n",
    "pkg/c.py": "import pkg.a\nthing = 1\n",
    # d <-> e, one edge under TYPE_CHECKING.
    "pkg/d.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.e import E\n",
    "pkg/e.py": "from pkg.d import D\n",
    "low/__init__.py": "",
    "low/x.py": "from high.y import Y\n",
    "high/__init__.py": "",
    "high/y.py": "import low\n",
    # pol.p uses torch through pol.q; pol.inner's __init__ loads torch for pol.inner.m.
    "pol/__init__.py": "",
    "pol/p.py": "def run():\n    from pol.q import go\n",
    "pol/q.py": "import torch.nn\n",
    "pol/inner/__init__.py": "import torch\n",
    "pol/inner/m.py": "",
    # Loading pol.lazy's package runs no function-level or TYPE_CHECKING import.
    "pol/lazy/__init__.py": "def make():\n    import torch\n",
    "pol/lazy/ok.py": "",
}


@pytest.fixture
def synthetic(tmp_path: Path) -> ImportGraph:
    _write_tree(tmp_path, SYNTHETIC)
    return build_graph(tmp_path, ("pkg", "low", "high", "pol"))


def test_checker_reports_cycles_through_functions_and_type_checking(
    synthetic: ImportGraph,
) -> None:
    """Cycles closed in a function or under TYPE_CHECKING are reported edge by edge."""
    cycles = find_cycles(synthetic)
    assert len(cycles) == 2
    first, second = sorted(cycles)
    assert first.startswith("import cycle pkg.a -> pkg.b -> pkg.c -> pkg.a:")
    assert "pkg.b -> pkg.c (pkg/b.py:2 `from pkg.c import thing`, inside a function)" in first
    assert "pkg.a -> pkg.b (pkg/a.py:1 `from . import b`, module level)" in first
    assert second.startswith("import cycle pkg.d -> pkg.e -> pkg.d:")
    assert "pkg.d -> pkg.e (pkg/d.py:3 `from pkg.e import E`, under TYPE_CHECKING)" in second


def test_checker_reports_a_forbidden_import(synthetic: ImportGraph) -> None:
    """Only a forbidden import is reported, naming both modules and the statement's line."""
    rules = (Forbid("low", ("high",), "low is below high"),)
    assert layer_violations(synthetic, rules) == [
        "low.x must not import high.y (low is below high): "
        "low.x -> high.y (low/x.py:1 `from high.y import Y`, module level)"
    ]
    only = (Only("high", ("pkg",), "high uses pkg only"),)
    assert layer_violations(synthetic, only)[0].startswith("high.y must not import low ")
    exclusive = (Exclusive("high", ("pkg",), "only pkg builds high"),)
    assert layer_violations(synthetic, exclusive)[0].startswith("low.x must not import high.y ")


def test_checker_reports_a_library_reached_through_functions_and_packages(
    synthetic: ImportGraph,
) -> None:
    """A library used in a function or loaded by a package __init__ is reported with its chain."""
    (through_function,) = reach_violations(synthetic, "pol.p", ("torch",))
    assert through_function.splitlines() == [
        "pol.p reaches torch:",
        "  pol.p -> pol.q (pol/p.py:2 `from pol.q import go`, inside a function)",
        "  pol.q -> torch.nn (pol/q.py:1 `import torch.nn`, module level)",
    ]
    (through_package,) = reach_violations(synthetic, "pol.inner.m", ("torch",))
    assert "pol.inner.m -> pol.inner (its package's __init__ runs first)" in through_package
    assert reach_violations(synthetic, "pol.lazy.ok", ("torch",)) == []
