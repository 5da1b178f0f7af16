"""The package's import graph: no import circle between modules, and no module imports one of a higher layer.

Read from the source with ``ast`` (nothing is imported): every ``import``/``from ... import`` of a
``subtune`` module, at module level or inside a function (a lazy import is still a dependency), except
those under ``if TYPE_CHECKING:`` (annotations only, never run). ``from pkg import name`` is an edge to
``pkg.name`` when that is a module, else to ``pkg``; a package is its ``__init__``. The implicit import
of a module's parent packages is not an edge (every module would otherwise depend on ``subtune``).
"""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

#: lowest first; a module belongs to the layer of the longest name that is it or one of its packages.
#: A module may import modules of its own layer (the circle check still applies) and of lower ones.
LAYERS: list[tuple[str, list[str]]] = [
    ("foundation", ["subtune", "subtune._lazy", "subtune.io", "subtune.timing", "subtune.warm",
                    "subtune.train_config", "subtune.trainable", "subtune.select", "subtune.halving",
                    "subtune.reuse", "subtune.track", "subtune.provenance"]),
    ("data and backbones", ["subtune.data", "subtune.models"]),
    ("training", ["subtune.augment", "subtune.optim", "subtune.loop", "subtune.train", "subtune.prefix",
                  "subtune.models.pretrain", "subtune.multitask"]),
    ("methods (the registry and the single-task methods)", ["subtune.methods"]),
    ("tuning and scoring", ["subtune.tune", "subtune.scoring"]),
    ("multi-task trainer", ["subtune.methods.multilora", "subtune.methods.multilora_compare"]),
    ("plan, config and reports", ["subtune.plan", "subtune.config", "subtune.claims", "subtune.report"]),
    ("stages and CLI", ["subtune.stages", "subtune.cli", "subtune.__main__"]),
]


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted((SRC / "subtune").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the nodes under ``if TYPE_CHECKING:``."""
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            t = node.test
            if (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
                    isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"):
                skip.update(id(n) for sub in node.body for n in ast.walk(sub))
    return skip


def imports(name: str, path: Path, mods: dict[str, Path]) -> dict[str, int]:
    """The subtune modules ``name`` imports -> the first line that does."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    skip = _type_checking_only(tree)
    found: dict[str, int] = {}

    def add(target: str, line: int) -> None:
        while target and target not in mods:  # subtune.x.y where y is a name in x: the module x
            target = target.rpartition(".")[0]
        if target.startswith("subtune") and target != name:
            found.setdefault(target, line)

    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for alias in node.names:
                full = f"{mod}.{alias.name}"
                add(full if full in mods else mod, node.lineno)
    return found


def graph() -> dict[str, dict[str, int]]:
    mods = modules()
    return {m: imports(m, p, mods) for m, p in mods.items()}


def circles(g: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out = []
    for root in g:
        if root in index:
            continue
        work = [(root, iter(g[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(g[w])))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
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
    return out


def layer(module: str) -> int | None:
    best, level = -1, None
    for i, (_, names) in enumerate(LAYERS):
        for n in names:
            if (module == n or (n != "subtune" and module.startswith(n + "."))) and len(n) > best:
                best, level = len(n), i
    return level


def test_the_graph_reads_the_package():
    g = graph()
    assert {"subtune.plan", "subtune.config", "subtune.tune", "subtune.methods.multilora"} <= set(g)
    assert "subtune.plan" in g["subtune.config"] and "subtune.tune" in g["subtune.methods.multilora"]


def test_no_import_circle_between_modules():
    g = graph()
    found = circles(g)
    detail = ["; ".join(f"{m} imports " + ", ".join(f"{t} (line {g[m][t]})" for t in c if t in g[m]) for m in c)
              for c in found]
    assert not found, "import circles:\n" + "\n".join(detail)


def test_every_module_has_a_layer():
    missing = sorted(m for m in graph() if layer(m) is None)
    assert not missing, f"give these modules a layer in tests/test_layers.py's LAYERS: {', '.join(missing)}"


def test_no_module_imports_a_higher_layer():
    g = graph()
    up = []
    for m, targets in sorted(g.items()):
        lm = layer(m)
        for t, line in sorted(targets.items()):
            lt = layer(t)
            if lm is not None and lt is not None and lt > lm:
                up.append(f"{m} ({LAYERS[lm][0]}) imports {t} ({LAYERS[lt][0]}) at line {line}")
    assert not up, "imports up a layer:\n" + "\n".join(up)
