"""The evaluation text: real English prose that ships with every Python, written by its documenters.

CPython's ``pydoc_data/topics.py`` holds the Language Reference topics that ``help()`` shows
(statements, the data model, operators, ...). We keep its prose paragraphs: blocks at the left
margin, with code samples, grammar rules and headings (indented or underlined) removed, the
lines of a paragraph joined. The text is fixed for a given Python version; the report names it.
"""

from __future__ import annotations

import platform
import re

_HEADING_RULE = re.compile(r"[*=\-~^]+")
MIN_PARAGRAPH_CHARS = 40
MIN_LETTER_FRACTION = 0.6


def _prose_paragraphs(topic: str) -> list[str]:
    paragraphs = []
    for block in re.split(r"\n\s*\n", topic):
        lines = [line for line in block.split("\n") if line.strip()]
        if not lines or any(line[:1].isspace() for line in lines):
            continue  # code sample, grammar production or indented list continuation
        if _HEADING_RULE.fullmatch(lines[-1].strip()):
            continue  # a heading with its underline
        text = " ".join(line.strip() for line in lines)
        letters = sum(c.isalpha() for c in text)
        if len(text) >= MIN_PARAGRAPH_CHARS and letters >= MIN_LETTER_FRACTION * len(text):
            paragraphs.append(text)
    return paragraphs


def load() -> tuple[str, str]:
    """``(name, text)``: the prose of CPython's pydoc topics, topics in sorted order, paragraphs blank-line separated."""
    from pydoc_data import topics

    paragraphs: list[str] = []
    for key in sorted(topics.topics):
        paragraphs.extend(_prose_paragraphs(topics.topics[key]))
    name = f"CPython {platform.python_version()} pydoc_data/topics.py (Language Reference prose)"
    return name, "\n\n".join(paragraphs)
