"""
Sphinx configuration for stickyproxy's documentation.

Build it from the repository root, as CI does (offline, warnings as
errors)::

    pip install -e . -r docs/requirements.txt
    sphinx-build -W --keep-going docs docs/_build

Links to the Python, Twisted, treq and attrs documentation (intersphinx)
need their inventories from the network, so they are made only when
C{STICKYPROXY_DOCS_INTERSPHINX=1} is set, e.g. for a published build.
Without them, references to those projects render as code, unlinked.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any

sys.path.insert(0, os.path.abspath(".."))

from stickyproxy import __version__  # noqa: E402

project = "stickyproxy"
author = "the stickyproxy developers"
copyright = "the stickyproxy developers"
version = release = __version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
]
try:
    import repoze.sphinx.autointerface  # noqa: F401
except ImportError:  # optional: interfaces then render as plain classes
    pass
else:
    extensions.append("repoze.sphinx.autointerface")

if os.environ.get("STICKYPROXY_DOCS_INTERSPHINX") == "1":
    extensions.append("sphinx.ext.intersphinx")
    intersphinx_mapping = {
        "python": ("https://docs.python.org/3", None),
        "twisted": ("https://docs.twisted.org/en/stable/api/", None),
        "treq": ("https://treq.readthedocs.io/en/stable/", None),
        "attrs": ("https://www.attrs.org/en/stable/", None),
    }

exclude_patterns = ["_build", "requirements.txt"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True}

try:
    import furo  # noqa: F401
except ImportError:
    html_theme = "alabaster"
else:
    html_theme = "furo"
html_title = f"stickyproxy {release}"

# The docstrings use Twisted's epytext-style inline markup (C{code},
# L{link}, I{italic}) inside Sphinx field lists; turn the markup into
# reStructuredText for autodoc.
_MARKUP = [
    (re.compile(r"C\{([^{}]*)\}"), r"``\1``"),
    (re.compile(r"L\{([^{}<]*?)\s*<([^{}]*)>\}"), r":py:obj:`\1 <\2>`"),
    (re.compile(r"L\{([^{}]*)\}"), r":py:obj:`\1`"),
    (re.compile(r"I\{([^{}]*)\}"), r"*\1*"),
]


def _epytext_markup(
    app: Any, what: str, name: str, obj: object, options: Any, lines: list[str]
) -> None:
    for index, line in enumerate(lines):
        for pattern, replacement in _MARKUP:
            line = pattern.sub(replacement, line)
        lines[index] = line


def setup(app: Any) -> None:
    app.connect("autodoc-process-docstring", _epytext_markup)
