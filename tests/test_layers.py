"""The package's architecture: subpackages by stage, imports that only run downward.

Every import in the package (module level and inside functions alike; only those under ``if
TYPE_CHECKING:`` are left out, as they never run) goes from a stage to one below it or within
itself. The order is the README's Design section.
"""

from __future__ import annotations

import ast
from pathlib import Path


PACKAGE = Path(__file__).resolve().parents[1] / "src" / "microcond"

# Lowest first; a stage imports only from stages before it (and from itself).
LAYERS = ["base", "cond", "data", "demodata", "lora", "model", "train", "sdxl", "sample", "metrics", "probe", "experiments", "cli"]


def stage_of(module: str) -> str | None:
    """The stage of a dotted module name inside the package ('microcond.data.crop' -> 'data')."""
    parts = module.split(".")
    if parts[0] != "microcond" or len(parts) < 2:
        return None
    return parts[1]


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import of ``path`` that can run, ``from microcond import X`` as
    ``microcond.X``."""
    tree = ast.parse(path.read_text())
    skipped: set[int] = set()
    for node in ast.walk(tree):  # imports under `if TYPE_CHECKING:` never run
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(n) for child in node.body for n in ast.walk(child)}
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "microcond":  # a stage, or a name of the package's face (__version__)
                found += [(node.lineno, f"microcond.{alias.name}") for alias in node.names if alias.name in LAYERS]
            else:
                found.append((node.lineno, node.module))
    return found


def upward_imports(package: Path = PACKAGE) -> list[str]:
    """'file:line stage -> stage' for each import that runs up the layers (or to an unknown stage)."""
    order = {stage: k for k, stage in enumerate(LAYERS)}
    problems = []
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package)
        here = relative.parts[0].removesuffix(".py")
        if here == "__init__":
            continue  # the package's face: lazy names of any stage, for users
        for line, module in imports_of(path):
            there = stage_of(module)
            if there is None or there == here:
                continue
            if there not in order or here not in order or order[there] > order[here]:
                problems.append(f"{relative}:{line} {here} -> {there} ({module})")
    return problems


def test_every_stage_is_in_the_layer_order():
    stages = {p.name.removesuffix(".py") for p in PACKAGE.iterdir() if not p.name.startswith(("_", ".")) and p.name != "py.typed"}
    assert stages == set(LAYERS)


def test_imports_only_run_downward():
    assert upward_imports() == []


def test_the_check_finds_a_planted_upward_import(tmp_path):
    import shutil

    copy = tmp_path / "microcond"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    crop = copy / "data" / "crop.py"
    crop.write_text(crop.read_text() + "\n\ndef _planted():\n    from microcond.sample.run import Run\n")
    assert upward_imports(copy) == [f"data/crop.py:{len(crop.read_text().splitlines())} data -> sample (microcond.sample.run)"]
