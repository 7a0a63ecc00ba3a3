"""MkDocs hooks of the documentation site (``hooks:`` in mkdocs.yml).

The docstrings use Sphinx roles (``:class:`Method```); mkdocstrings renders the role's name as text
before the code span (``:class:<code>Method</code>``). This hook keeps the code span and drops the
role, so the API reference reads as the docstring means. Nothing here imports the package.
"""

from __future__ import annotations

import re
from typing import Any

_ROLE_HTML = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|data|obj|exc|const):(<code>)~?")


def strip_sphinx_roles(html: str) -> str:
    """``:class:<code>~a.B</code>`` -> ``<code>a.B</code>``."""
    return _ROLE_HTML.sub(r"\1", html)


def on_page_content(html: str, **kwargs: Any) -> str:
    return strip_sphinx_roles(html)
