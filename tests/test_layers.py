"""The layering of DESIGN.md, checked on the source: each layer imports only the ones below it,
nothing below search/ imports Optuna, and importing the evaluation code loads no mergekit."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "evomerge"
# Top to bottom; a module may import its own layer and any layer after it.
LAYERS = [
    {"cli", "__main__"},
    {"__init__", "api"},
    {"demo"},
    {"search"},
    {"toy"},
    {"analysis"},
    {"evaluate", "train"},
    {"merge"},
    {"recipe", "space", "depthwise"},
    {"config", "devices", "files", "errors", "extras", "shipped"},
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield "evomerge." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts), path


def test_each_layer_imports_only_the_ones_below_it():
    wrong = []
    for module, path in modules():
        own = layer_of(module)
        for imported in imports(path):
            if imported == "evomerge" or imported.startswith("evomerge."):
                other = layer_of(imported) if imported != "evomerge" else "__init__"
                if RANK[other] < RANK[own]:
                    wrong.append(f"{module} imports {imported} ({other} is above {own})")
    assert not wrong, "\n".join(wrong)


def test_nothing_below_search_imports_optuna():
    below = {name for names in LAYERS[RANK["search"] + 1 :] for name in names}
    wrong = [
        module for module, path in modules() if layer_of(module) in below and any(name == "optuna" or name.startswith("optuna.") for name in imports(path))
    ]
    assert not wrong, wrong


def test_importing_the_evaluation_code_loads_no_mergekit():
    code = "import sys, evomerge.evaluate.models, evomerge.evaluate.objective; print(sorted(m for m in sys.modules if m.startswith(('mergekit', 'optuna'))))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=PACKAGE.parent)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout
