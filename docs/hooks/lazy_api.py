"""Griffe extension: featx's public names, as mkdocstrings sees them.

``featx/__init__.py`` loads each public name on first use (a module ``__getattr__`` over the
``_API`` table: name -> defining module), which static analysis cannot follow. This extension
reads that table from the source and gives the ``featx`` package one alias per name, pointing at
the defining module, so the API page can write ``::: featx.extract`` and keep working wherever
the definition moves, as long as ``_API`` says where.
"""

from __future__ import annotations

import ast

import griffe


def _api_table(source: str) -> dict[str, str]:
    for node in ast.parse(source).body:
        targets = node.targets if isinstance(node, ast.Assign) else (
            [node.target] if isinstance(node, ast.AnnAssign) else [])
        if any(isinstance(t, ast.Name) and t.id == "_API" for t in targets):
            return ast.literal_eval(node.value)
    raise ValueError("featx/__init__.py has no literal _API table")


class LazyAPI(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs) -> None:
        if pkg.path != "featx":
            return
        api = _api_table(pkg.filepath.read_text(encoding="utf-8"))
        for name, module in api.items():
            pkg.set_member(name, griffe.Alias(name, f"featx.{module}.{name}", parent=pkg))
        pkg.exports = ["__version__", *sorted(api)]
