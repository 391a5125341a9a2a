"""Griffe extension for the API pages: read a Google-style ``Example:`` section as ``Examples:``.

The project's docstrings say ``Example:`` (singular). Griffe's Google parser reads that title as an
admonition whose body is Markdown, so doctest lines (``>>> ...``) would render as nested block quotes.
This renames the title before parsing, so examples render as code. It touches no source file.
"""

from __future__ import annotations

import re

import griffe

_TITLE = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)


class ExampleSections(griffe.Extension):
    """Rewrite ``Example:`` section titles to ``Examples:`` in every loaded docstring."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: object) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _TITLE.sub(r"\1Examples:", obj.docstring.value)
