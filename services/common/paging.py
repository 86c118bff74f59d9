"""Page tokens and page sizes, the same for every list a Ferry API answers.

A token is opaque to clients: the position after a page's last entry, as urlsafe base64 JSON.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from services.common.errors import InvalidArgument


def encode_page_token(position: dict[str, Any]) -> str:
    """An opaque token for the position after the last row of a page."""
    return base64.urlsafe_b64encode(json.dumps(position).encode()).decode()


def decode_page_token(token: str) -> dict[str, Any]:
    """The position a page token stands for; empty for the first page.

    Raises:
        InvalidArgument: the token was not made by this API.
    """
    if not token:
        return {}
    try:
        position = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        position = None
    if not isinstance(position, dict):
        raise bad_page_token()
    return position


def bad_page_token() -> InvalidArgument:
    """The error for a page token this API did not hand out."""
    return InvalidArgument(
        "page_token is not valid; pass the next_page_token of the previous page unchanged",
        reason="INVALID_PAGE_TOKEN",
    )


def page_size(requested: int, default: int = 50, maximum: int = 1000) -> int:
    """Validates a page size; 0 means the default.

    Raises:
        InvalidArgument: outside 0..maximum.
    """
    if requested == 0:
        return default
    if not 1 <= requested <= maximum:
        raise InvalidArgument(
            f"page_size must be between 1 and {maximum} (or 0 for {default}); got {requested}",
            reason="INVALID_PAGE_SIZE",
        )
    return requested
