"""Layers only point down: core -> networks and detectors -> face analysis -> data preparation -> scripts.

Every import statement of every library module (module level or inside a function) is read with ``ast``;
a package may import itself and packages of a strictly lower layer. Scripts (the top-level ``*.py``,
``tools/``, ``bench/``, ``tests/``) may import any library, and no library imports a script.
"""
import ast
import os

import pytest

from agegender.config import PROJECT_ROOT

LAYERS = {"agegender": 0, "rcnn": 0, "symbols": 1, "mtcnn": 1, "essh": 1, "analysis": 2, "data": 3}
SCRIPT_FOLDERS = ("tools", "bench", "tests")
SCRIPTS = set(SCRIPT_FOLDERS) | {name[:-3] for name in os.listdir(PROJECT_ROOT) if name.endswith(".py")}


def imported_packages(source):
    """Top-level names of the absolute imports in Python ``source`` (relative imports stay inside)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def layer_violations(package, source):
    """``"package imports target"`` for each import of ``source`` (a module of ``package``) that points up."""
    found = []
    for target in sorted(imported_packages(source)):
        if target == package:
            continue
        if target in SCRIPTS:
            found.append(f"{package} imports the script {target}")
        elif target in LAYERS and LAYERS[target] >= LAYERS[package]:
            found.append(f"{package} (layer {LAYERS[package]}) imports {target} (layer {LAYERS[target]})")
    return found


def library_modules():
    for package in LAYERS:
        for folder, _, files in os.walk(os.path.join(PROJECT_ROOT, package)):
            for name in sorted(files):
                if name.endswith(".py"):
                    yield package, os.path.join(folder, name)


def test_every_layer_is_known():
    folders = {name for name in os.listdir(PROJECT_ROOT)
               if os.path.isfile(os.path.join(PROJECT_ROOT, name, "__init__.py"))}
    assert folders == set(LAYERS) | {"tools", "bench"}


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_library_imports_point_down(package):
    problems = []
    for owner, path in library_modules():
        if owner != package:
            continue
        with open(path, encoding="utf-8") as f:
            problems += [f"{os.path.relpath(path, PROJECT_ROOT)}: {p}" for p in layer_violations(package, f.read())]
    assert not problems, "\n".join(problems)


def test_the_check_sees_upward_imports_at_any_depth():
    source = ("import os\nfrom . import config\n"
              "def f():\n    from analysis.pipeline import FaceAnalyzer\n    import mtcnn.detector\n")
    assert layer_violations("agegender", source) == ["agegender (layer 0) imports analysis (layer 2)",
                                                     "agegender (layer 0) imports mtcnn (layer 1)"]
    assert layer_violations("mtcnn", "import essh\nfrom tools.fetch_weights import main\n") == [
        "mtcnn (layer 1) imports essh (layer 1)", "mtcnn imports the script tools"]
    assert layer_violations("analysis", "from mtcnn import MtcnnDetector\nimport agegender.image\n") == []
