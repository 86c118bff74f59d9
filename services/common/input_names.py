"""The names of a job's inputs as its results show them: which photo, which manifest line.

A job made from an upload names each item by what the user gave (``Prediction.input_name``, the
result line's ``input``): a zip file's name, a manifest line's ``"id"``, the image a line names,
else the line's number. The names come from a user's zip or manifest, so they are treated as
hostile text that is only ever shown, never used as a key, a path or markup:

* Unicode is normalized to NFC: a zip made on macOS spells ``é`` as ``e`` and a combining accent
  (NFD); the result shows the name as the user would type it.
* Control, format and separator characters (C0/C1 controls, DEL, bidi overrides such as U+202E,
  zero-width spaces, line and paragraph separators, lone surrogates) are written as escapes
  (``\\x1b``, ``\\u202e``): a name cannot move a terminal's cursor, reverse the text around it,
  hide characters, split a CSV or JSONL line, or fail to encode (a NUL cannot be stored in
  Postgres, a lone surrogate cannot be serialized). The zero-width joiner that emoji sequences
  use is kept.
* A name longer than ``limits.INPUT_NAME_CHARS`` keeps its start and its end around ``…``.
* A URL loses its ``user:password@``: records and result files are read by others than the
  manifest's author and kept longer.

Path traversal (``../``) needs no handling: uploads store a zip's files by position
(``<tenant>/<upload>/<n>``), and no name reaches a file system.

A manifest line's ``"id"`` is the user's own key, matched back exactly, so it is never changed:
one that is not a non-empty string of printable characters within the limit is refused with the
line (``id_problem``).
"""

from __future__ import annotations

import unicodedata
import urllib.parse

from services.common import limits

#: Shown between a long name's start and end.
ELLIPSIS = "…"
#: Categories escaped: controls, format characters, surrogates, line and paragraph separators.
_ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
#: Format characters kept: the zero-width joiner inside emoji sequences (👩‍💻).
_KEPT = frozenset({"\u200d"})


def _hidden(char: str) -> bool:
    return char not in _KEPT and unicodedata.category(char) in _ESCAPED_CATEGORIES


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def shown(raw: str, limit: int = limits.INPUT_NAME_CHARS) -> str:
    """``raw`` (a file name or an image reference from a user's upload) as a record shows it:
    NFC, hidden characters escaped, at most ``limit`` characters."""
    name = unicodedata.normalize("NFC", raw)
    if any(_hidden(c) for c in name):
        name = "".join(_escape(c) if _hidden(c) else c for c in name)
    if len(name) <= limit:
        return name
    head = (limit - len(ELLIPSIS)) // 2
    tail = limit - len(ELLIPSIS) - head
    return name[:head] + ELLIPSIS + name[len(name) - tail :]


def of_url(url: str) -> str:
    """An image URL as a record shows it: without credentials, then ``shown``."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # not expected: the URL was fetched; show it as text then
        return shown(url)
    if "@" in parts.netloc:
        parts = parts._replace(netloc=parts.netloc.rpartition("@")[2])
    return shown(urllib.parse.urlunsplit(parts))


def of_line(number: int) -> str:
    """The name of a manifest line that gave none (a text, a payload, a tensor, inline content)."""
    return f"line {number}"


def id_problem(value: object) -> str | None:
    """What is wrong with a manifest line's ``"id"`` (None when it can name the item as given)."""
    if not isinstance(value, str) or not value.strip():
        return '"id" must be a non-empty string'
    if len(value) > limits.INPUT_NAME_CHARS:
        return f'"id" is {len(value)} characters and may be at most {limits.INPUT_NAME_CHARS}'
    hidden = next((c for c in value if _hidden(c)), None)
    if hidden is not None:
        return f'"id" holds the control or invisible character U+{ord(hidden):04X}; use printable text'
    return None
