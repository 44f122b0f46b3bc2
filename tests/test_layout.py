"""The package's shape: no import circle, nothing inside it importing the package root, and a
command line that starts without torch or scikit-learn."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import featx

ROOT = Path(featx.__file__).parent


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(node: ast.AST, parents: dict) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def _imports() -> dict[str, set[str]]:
    """For each featx module, the featx modules it imports, at its top or inside a function
    (those, too, close a circle when they run), leaving out what only type checkers read."""
    modules = {_module(p): p for p in ROOT.rglob("*.py")}
    found: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found[name] = set()
        for node in ast.walk(tree):
            if _type_checking_only(node, parents):
                continue
            if isinstance(node, ast.ImportFrom) and node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
                # `from . import x` names a submodule where there is one, else a name in target.
                found[name] |= {f"{target}.{a.name}" if f"{target}.{a.name}" in modules else target
                                for a in node.names}
            elif isinstance(node, ast.Import | ast.ImportFrom):
                absolute = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
                found[name] |= {m for m in absolute if m and m.split(".")[0] == "featx"}
    return found


def test_nothing_inside_the_package_imports_the_package_root():
    importers = sorted(m for m, targets in _imports().items() if m != "featx" and "featx" in targets)
    assert importers == []


STAGES = ("featx.checking", "featx.extraction", "featx.fitting", "featx.scoring", "featx.finetuning")


def _stage(module: str) -> str | None:
    return next((s for s in STAGES if module == s or module.startswith(f"{s}.")), None)


def test_stages_share_lower_modules_and_never_import_each_other():
    sideways = sorted(f"{m} -> {t}" for m, targets in _imports().items() for t in targets
                      if _stage(m) and _stage(t) and _stage(t) != _stage(m))
    assert sideways == []


def test_there_is_no_import_circle():
    graph = _imports()
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, f"import circle: {' -> '.join((*path[path.index(module):], module))}"
        if module in done:
            return
        for target in graph.get(module, ()):
            visit(target, (*path, module))
        done.add(module)

    for module in graph:
        visit(module, ())


def test_the_command_line_starts_without_torch_or_scikit_learn():
    heavy = ["torch", "torchvision", "sklearn", "h5py", "matplotlib"]
    code = ("import sys\nfrom featx.cli import main\n"
            "for argv in (['--help'], ['extract', '--help'], ['fit-head', '--help'], ['finetune', '--help'],"
            " ['score', '--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            f"print(sorted(m for m in {heavy!r} if m in sys.modules), file=sys.stderr)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr.strip().splitlines()[-1] == "[]", r.stderr


def test_every_public_name_resolves():
    for name in featx.__all__:
        assert getattr(featx, name) is not None, name
