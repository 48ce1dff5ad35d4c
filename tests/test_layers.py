"""The arrows between layers, checked on the import graph (every import in the package, lazy ones included;
imports under ``if TYPE_CHECKING:`` are annotations, not dependencies).

    cli -> protocol, report -> training, validation, extraction, inference -> models, objectives -> data

``config``, ``settings``, ``records``, ``errors``, ``files`` and ``feedback`` are the shared foundation every layer may
import. Only ``protocol/`` and the CLI import ray; rich (presentation) lives in the CLI and its
``terminal.py``, ``protocol/progress.py`` and ``report/``: library code speaks through ``feedback``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pianoray"

# Higher may import lower or equal, never the other way.
RANK = {"data": 0, "objectives": 1, "models": 1, "training": 2, "validation": 2, "extraction": 2, "inference": 2,
        "protocol": 3, "report": 3, "cli": 4, "terminal": 4}
FOUNDATION = {"config", "settings", "records", "errors", "files", "feedback", "pianoray"}
RAY_ALLOWED = {"protocol", "cli"}
RICH_HOME = ("pianoray.cli", "pianoray.terminal", "pianoray.protocol.progress", "pianoray.report")


def _module(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(tree: ast.AST) -> set[str]:
    """Modules imported anywhere in ``tree`` except inside ``if TYPE_CHECKING:`` blocks."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


GRAPH = {_module(p): _imports(ast.parse(p.read_text())) for p in sorted(PACKAGE.rglob("*.py"))}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "pianoray":
        return None
    return parts[1] if len(parts) > 1 else "pianoray"


def test_every_package_module_has_a_layer() -> None:
    unknown = sorted({_layer(m) for m in GRAPH} - set(RANK) - FOUNDATION)
    assert not unknown, f"give these a rank in RANK (or FOUNDATION): {unknown}"


def test_no_import_points_up_a_layer() -> None:
    bad = []
    for module, imported in GRAPH.items():
        src = _layer(module)
        for target in imported:
            dst = _layer(target)
            if dst is None or dst == src or dst in FOUNDATION:
                continue
            if src in FOUNDATION and src != "records":
                continue  # config and settings may read the registries they validate against
            if src == "records" or RANK[dst] > RANK[src]:
                bad.append(f"{module} -> {target}")
    assert not bad, "imports against the layering:\n" + "\n".join(sorted(bad))


def test_models_and_objectives_never_import_training_or_protocol() -> None:
    bad = [f"{m} -> {t}" for m, ts in GRAPH.items() if _layer(m) in ("models", "objectives")
           for t in ts if _layer(t) in ("training", "protocol", "cli", "report")]
    assert not bad, bad


def test_only_protocol_and_the_cli_import_ray() -> None:
    bad = [f"{m} -> {t}" for m, ts in GRAPH.items() if _layer(m) not in RAY_ALLOWED
           for t in ts if t == "ray" or t.startswith("ray.")]
    assert not bad, bad


def test_records_are_pure() -> None:
    assert not {t for t in GRAPH["pianoray.records"] if t.split(".")[0] in ("pianoray", "torch", "ray", "rich")}


def test_rich_only_at_the_edge() -> None:
    users = {m for m, ts in GRAPH.items() if any(t == "rich" or t.startswith("rich.") for t in ts)}
    library = {m for m in users if not m.startswith(RICH_HOME)}
    assert not library, f"rich imported outside the edge (take a pianoray.feedback.Feedback): {sorted(library)}"


@pytest.mark.parametrize("module", ["pianoray.records", "pianoray.protocol.ledger",
                                    "pianoray.protocol.view"])
def test_reading_a_run_loads_neither_torch_nor_ray(module: str) -> None:
    """``pianoray status`` and ``report`` read a run from any shell: the record and read-model modules must
    import without torch or ray, nor the numeric stack only selection needs (checked in a fresh interpreter)."""
    import subprocess
    import sys

    code = (f"import sys, importlib; importlib.import_module({module!r}); "
            "bad = [m for m in ('torch', 'ray', 'scipy', 'sklearn') if m in sys.modules]; print(bad); "
            "sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
