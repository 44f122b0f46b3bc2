"""The package's shape: no import circle (imports inside functions and for type checkers
included), stages that import only earlier stages, at most ten modules beside the packages, no
function over 60 lines but the parser, nothing inside importing the package root, and a command
line that starts without torch or scikit-learn."""

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


def _imports() -> dict[str, set[str]]:
    """For each featx module, the featx modules it imports: at its top, inside a function (those,
    too, close a circle when they run) or for type checkers (a circle to whoever reads it)."""
    modules = {_module(p): p for p in ROOT.rglob("*.py")}
    found: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found[name] = set()
        for node in ast.walk(tree):
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


# The stages in the order they build on each other: auditing fits stage two's logistic heads,
# fine-tuning validates with stage one's engine, scoring extracts a folder's features as stage one does.
STAGES = ("featx.extraction", "featx.fitting", "featx.auditing", "featx.finetuning", "featx.scoring")


def _stage(module: str) -> int | None:
    return next((i for i, s in enumerate(STAGES) if module == s or module.startswith(f"{s}.")), None)


def test_a_stage_imports_only_earlier_stages():
    later = sorted(f"{m} -> {t}" for m, targets in _imports().items() for t in targets
                   if _stage(m) is not None and _stage(t) is not None and _stage(t) > _stage(m))
    assert later == []


def test_the_shared_packages_never_import_a_stage():
    shared = ("featx.backbones", "featx.cache", "featx.data", "featx.heads", "featx.reporting", "featx.util")
    upward = sorted(f"{m} -> {t}" for m, targets in _imports().items() for t in targets
                    if m.startswith(shared) and _stage(t) is not None)
    assert upward == []


def test_at_most_ten_modules_beside_the_packages():
    modules = sorted(p.stem for p in ROOT.glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    assert len(modules) <= 10, modules


def test_no_function_is_over_60_lines_but_the_parser():
    long = sorted(f"{p.relative_to(ROOT)}:{node.name} {node.end_lineno - node.lineno + 1}"
                  for p in ROOT.rglob("*.py") for node in ast.walk(ast.parse(p.read_text()))
                  if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                  and node.end_lineno - node.lineno + 1 > 60 and node.name != "build_parser")
    assert long == []


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
