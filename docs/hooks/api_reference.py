"""mkdocs hook: the Python API page documents every public name of featx, and only those.

The public names are the keys of ``_API`` in ``featx/__init__.py`` (read from the source, as the
griffe extension ``lazy_api.py`` reads them); ``docs/api.md`` must hold one ``::: featx.NAME``
for each. A name added to ``_API`` without a line there, or a line naming no public name, fails
the build, so the API reference cannot fall behind the package.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from mkdocs.exceptions import PluginError

sys.path.insert(0, str(Path(__file__).parent))
from lazy_api import _api_table

API_PAGE = "api.md"
DIRECTIVE = re.compile(r"^:::\s*featx\.(\w+)\s*$", re.MULTILINE)


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri != API_PAGE:
        return markdown
    init = Path(config.config_file_path).parent / "featx" / "__init__.py"
    public = set(_api_table(init.read_text(encoding="utf-8")))
    documented = DIRECTIVE.findall(markdown)
    missing = sorted(public - set(documented))
    unknown = sorted(set(documented) - public)
    twice = sorted({name for name in documented if documented.count(name) > 1})
    problems = [f"{label}: {', '.join(names)}" for label, names in
                (("not documented", missing), ("not public names of featx", unknown),
                 ("documented twice", twice)) if names]
    if problems:
        raise PluginError(f"api_reference: docs/{API_PAGE}: {'; '.join(problems)} "
                          f"(the public names are the keys of _API in featx/__init__.py)")
    return markdown
