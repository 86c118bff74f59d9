"""The names a job's results give its inputs, from hostile zip file names and manifest lines."""

from __future__ import annotations

import json
import unicodedata

import pytest

from services.common import input_names, limits


def test_an_ordinary_nested_name_is_kept_as_it_is() -> None:
    assert input_names.shown("holiday/2024/IMG_0001.jpg") == "holiday/2024/IMG_0001.jpg"
    assert input_names.shown("../../etc/passwd") == "../../etc/passwd"  # only ever shown, never a path
    assert input_names.shown("Ferien/Strand 😀/👩‍💻.jpg") == "Ferien/Strand 😀/👩‍💻.jpg"  # ZWJ kept


def test_a_decomposed_name_from_a_mac_zip_is_shown_composed() -> None:
    decomposed = unicodedata.normalize("NFD", "café/Été.jpg")
    assert decomposed != "café/Été.jpg"
    assert input_names.shown(decomposed) == "café/Été.jpg"


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("\x1b[31mred.jpg", "\\x1b[31mred.jpg"),  # a terminal escape
        ("a\nb\r\tc\x00.jpg", "a\\x0ab\\x0d\\x09c\\x00.jpg"),  # lines, tabs, NUL (Postgres refuses it)
        ("photo\u202egpj.exe", "photo\\u202egpj.exe"),  # right-to-left override: shows as photoexe.jpg
        ("a\u200bb\ufeff.jpg", "a\\u200bb\\ufeff.jpg"),  # zero-width space, BOM
        ("line\u2028sep\u2029.jpg", "line\\u2028sep\\u2029.jpg"),  # break JSON inside JavaScript
        ("\x7f\x85.jpg", "\\x7f\\x85.jpg"),  # DEL, C1 next line
        ("lone\ud800.jpg", "lone\\ud800.jpg"),  # a lone surrogate cannot be encoded
        ("tag\U000e0041.jpg", "tag\\U000e0041.jpg"),  # an invisible tag character
    ],
)
def test_hidden_characters_are_escaped_so_the_name_is_safe_to_print_and_store(raw: str, shown: str) -> None:
    name = input_names.shown(raw)
    assert name == shown
    name.encode("utf-8")  # encodes (no surrogates), so protobuf serializes it
    assert all(c.isprintable() for c in name)
    assert json.loads(json.dumps(name)) == name


def test_a_long_name_keeps_its_start_and_end_within_the_limit() -> None:
    raw = "top/" + "deep/" * 1000 + "IMG_0001.jpg"
    name = input_names.shown(raw)
    assert len(name) == limits.INPUT_NAME_CHARS
    assert name.startswith("top/deep/") and name.endswith("/IMG_0001.jpg")
    assert input_names.ELLIPSIS in name
    escapes = input_names.shown("\x01" * 5000)  # escaping grows a name: the limit applies after it
    assert len(escapes) == limits.INPUT_NAME_CHARS
    assert input_names.shown("x" * limits.INPUT_NAME_CHARS) == "x" * limits.INPUT_NAME_CHARS


def test_a_url_is_shown_without_its_credentials() -> None:
    assert (
        input_names.of_url("https://bob:s3cret@example.com/a/cat.jpg?v=2")
        == "https://example.com/a/cat.jpg?v=2"
    )
    assert input_names.of_url("https://example.com/a%20b/cat.jpg") == "https://example.com/a%20b/cat.jpg"
    assert input_names.of_url("http://[::1/x") == "http://[::1/x"  # unparsable: shown as text


def test_a_line_without_a_name_is_named_by_its_number() -> None:
    assert input_names.of_line(17) == "line 17"


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("", "non-empty string"),
        ("   ", "non-empty string"),
        (7, "non-empty string"),
        (None, "non-empty string"),
        ("x" * (limits.INPUT_NAME_CHARS + 1), "at most 1024"),
        ("a\x00b", "U+0000"),
        ("a\tb", "U+0009"),
        ("photo\u202egpj", "U+202E"),
    ],
)
def test_a_manifest_id_that_cannot_name_an_item_as_given_is_refused(value: object, words: str) -> None:
    problem = input_names.id_problem(value)
    assert problem is not None and words in problem


def test_a_manifest_id_is_kept_exactly() -> None:
    for value in ("photo-17", "Kunde 4711 / Rechnung", "x" * limits.INPUT_NAME_CHARS, "e\u0301"):
        assert input_names.id_problem(value) is None
