"""The spans compression never touches (code, template variables, URLs, e-mail addresses,
quoted strings): set aside behind sentinels before anything else, put back byte for byte."""

from __future__ import annotations

import functools
import re
from typing import Final

__all__ = ["PROTECTED_KINDS", "SENTINEL", "SENTINEL_CLOSE", "SENTINEL_OPEN", "protected_pattern"]

SENTINEL_OPEN: Final = "\ue000"
SENTINEL_CLOSE: Final = "\ue001"
SENTINEL = re.compile("\ue000(\\d+)\ue001")

# Spans set aside untouched, each with a string a text must hold for it to apply (so a
# prompt only pays for the kinds it has): fences first (they may hold backticks and
# quotes), then inline code, template variables, URLs, e-mail addresses, quoted strings.
PROTECTED_KINDS: Final = (
    ("```", r"```.*?(?:```|\Z)"),
    ("~~~", r"(?m:^[ \t]*~~~.*?(?:^[ \t]*~~~|\Z))"),
    ("`", r"``[^\n]*?``|`[^`\n]+`"),
    ("{", r"\{\{[^\n]*?\}\}|\{%[^\n]*?%\}|\{[^{}\n]*\}"),
    ("://", r"\b(?:https?|ftp)://[^\s<>\"'`]*[^\s<>\"'`.,;:!?)\]]"),
    ("www.", r"\bwww\.[^\s<>\"'`]*[^\s<>\"'`.,;:!?)\]]"),
    ("@", r"(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)+"),
    ('"', r'"[^"\n]*"'),
    ("“", r"“[^”\n]*”"),
    ("«", r"«[^»\n]*»"),
    ("'", r"(?<![\w'’])'[^'\n]{1,200}?'(?!\w)"),
)


@functools.lru_cache(maxsize=256)
def protected_pattern(kinds: tuple[bool, ...]) -> re.Pattern[str] | None:
    """The pattern of the protected spans a text can hold (`kinds` as in PROTECTED_KINDS)."""
    sources = [source for (_, source), present in zip(PROTECTED_KINDS, kinds, strict=True) if present]
    return re.compile("|".join(sources), re.DOTALL) if sources else None
