"""``ferry keys``: create, list and revoke API keys (needs an API key with the admin scope)."""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

SCOPES = ("predict", "jobs", "read", "admin")


def parse_rate(text: str) -> float:
    """Requests per second of ``"50/s"``, ``"600/m"``, ``"1000/h"`` or a bare ``"50"``.

    Raises:
        argparse.ArgumentTypeError: another form (argparse shows the message).
    """
    number, _, unit = text.strip().partition("/")
    per = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}.get(unit.strip().lower())
    try:
        value = float(number)
    except ValueError:
        value = math.nan
    if per is None or not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"rate {text!r} is not of the form '50/s', '600/m' or '1000/h'")
    return value / per


def _scopes(text: str) -> list[str]:
    scopes = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown or not scopes:
        raise argparse.ArgumentTypeError(f"scopes are a comma-separated list of {', '.join(SCOPES)}")
    return scopes


def add_parser(sub: Any) -> None:
    """Adds ``keys create|list|revoke`` to the ``ferry`` command's subparsers."""
    keys = sub.add_parser("keys", help="create, list and revoke API keys (needs an admin key)")
    actions = keys.add_subparsers(dest="keys_command", required=True)
    create = actions.add_parser("create", help="make a key; it is shown once, store keeps only its digest")
    create.add_argument("--tenant", required=True, help="who the key acts for, e.g. acme")
    create.add_argument(
        "--scopes",
        type=_scopes,
        default=["predict", "jobs", "read"],
        help="comma-separated: " + ",".join(SCOPES),
    )
    create.add_argument(
        "--rate", type=parse_rate, default=0.0, help="own rate limit: 50/s, 600/m (default: the gateway's)"
    )
    create.add_argument(
        "--burst", type=int, default=0, help="requests at once above the rate (default: twice it)"
    )
    create.add_argument("--name", default="", help="a label for the key")
    listing = actions.add_parser("list", help="list keys, newest first (never the keys themselves)")
    listing.add_argument("--tenant", default="", help="only this tenant's keys")
    listing.add_argument("--all", action="store_true", help="revoked keys too")
    revoke = actions.add_parser("revoke", help="stop a key from working (keys/ID or ID)")
    revoke.add_argument("name")


def run(ferry: Any, args: argparse.Namespace, show: Any) -> int:
    """Runs a ``keys`` command with ``ferry`` (a FerryClient); ``show`` prints a message."""
    if args.keys_command == "create":
        created = ferry.create_key(args.tenant, args.scopes, args.rate, args.burst, args.name)
        show(created)  # api_key: this is the only time it is shown (store keeps only its digest)
        print("save api_key now: it cannot be shown again", file=sys.stderr)
    elif args.keys_command == "list":
        for key in ferry.list_keys(args.tenant, args.all):
            show(key)
    else:
        show(ferry.revoke_key(args.name))
    return 0
