"""The arrows point down: cli -> distributed -> report -> dst/seg/data -> config/seeds/storage/weights.

Read from the source (imports anywhere in a module, top level or inside functions): pure code never
imports ray, and no module imports a layer above its own.
"""

import ast
import subprocess
import sys
from pathlib import Path

import dstray

ROOT = Path(dstray.__file__).parent
LAYER = {"__main__": 6, "cli": 5, "distributed": 4, "report": 3, "cells": 3, "dst": 2, "seg": 2, "export": 2, "policy": 1, "data": 1,
         "presets": 1}  # others: 0


def _modules():
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        yield (parts[0] if parts[0] != "__init__" else ""), path


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def _layer(name: str) -> int:
    return LAYER.get(name, 0)


def test_only_the_ray_layer_imports_ray_and_no_arrow_points_up():
    problems = []
    for top, path in _modules():
        for name in _imports(path):
            if (name == "ray" or name.startswith("ray.")) and top != "distributed":
                problems.append(f"{path.relative_to(ROOT)} imports {name}")
            if name.startswith("dstray."):
                target = name.split(".")[1]
                if target in LAYER or (ROOT / f"{target}.py").exists():
                    if _layer(target) > _layer(top) and target != top:
                        problems.append(f"{path.relative_to(ROOT)} ({top or 'dstray'}) imports {name}")
    assert not problems, "\n".join(problems)


def test_the_command_line_does_not_start_with_ray():
    code = ("import sys, dstray.cli; dstray.cli.build_parser(); "
            "assert 'ray' not in sys.modules and 'torch' not in sys.modules, 'ray/torch imported by the CLI'")
    subprocess.run([sys.executable, "-c", code], check=True)
