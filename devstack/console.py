"""The console's routes on the public port: Envoy answers ``/console/`` with the files in ``console/``.

The console is a static single-page app that calls the public REST API with the user's key, so it
needs no server of its own: each file is a ``direct_response`` whose body Envoy reads from disk
when it loads its config (like ``/openapi.json``, devstack/edge.py). One route per file, listed
from the folder at render time: a path that is not a file of the console is a 404 like any
unknown path, and no request can name a file outside the folder.

Every answer carries a strict Content-Security-Policy: scripts and styles only from the console's
own files (no inline script or style, no eval), connections only to this origin (the REST API),
images only from here or the ``blob:`` URLs of pictures the user picked, no framing.
"""

from __future__ import annotations

from pathlib import Path

from devstack import edge

#: The console's files (index.html and what it loads), committed as they are served: no build step.
CONSOLE_DIR = Path(__file__).resolve().parent.parent / "console"
#: Where the console is on the public port.
CONSOLE_PATH = "/console/"

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
    ".png": "image/png",
}

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)

#: Headers of every console answer: the policy, no sniffing, no referrer, always revalidated (a
#: new Envoy config serves new files; the browser must not keep old modules beside new ones).
SECURITY_HEADERS = (
    ("content-security-policy", CONTENT_SECURITY_POLICY),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-cache"),
    ("cross-origin-opener-policy", "same-origin"),
)


def console_files(folder: Path = CONSOLE_DIR) -> list[str]:
    """The names of the files Envoy serves, sorted (the folder is flat)."""
    return sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix in CONTENT_TYPES)


def _file_route(path: str, filename: str, content_type: str) -> str:
    headers = "".join(
        f"""
                            - header:
                                key: {key}
{edge.folded(f'                                value: "{value}"')}
                              append_action: OVERWRITE_IF_EXISTS_OR_ADD"""
        for key, value in (("content-type", content_type), *SECURITY_HEADERS)
    )
    return f"""
                        - match: {{path: "{path}"}}
                          direct_response:
                            status: 200
                            body: {{filename: "{filename}"}}
                          response_headers_to_add:{headers}
                          typed_per_filter_config:{edge.skipped_filters()}"""


def routes(served_dir: str, folder: Path = CONSOLE_DIR) -> str:
    """The console's routes as route YAML text: ``/console`` and a GET of ``/`` redirect to
    ``/console/`` (index.html), and each file of ``folder`` is answered from ``served_dir`` (where
    Envoy finds the folder); a method other than GET or HEAD is 405, as on the API's paths."""
    methods = ("GET", "HEAD")
    allow = ", ".join(methods)
    other = edge.other_methods(f"^{CONSOLE_PATH.rstrip('/')}(/.*)?$", methods)
    text = edge.not_allowed_route(other, allow, f"the console's files take {allow}")
    text += f"""
                        - match: {{path: "{CONSOLE_PATH.rstrip("/")}"}}
                          redirect: {{path_redirect: "{CONSOLE_PATH}"}}
                          typed_per_filter_config:{edge.skipped_filters()}"""
    # A browser pointed at the public port (the first thing a new user tries) got the JSON 404
    # "Could not resolve / to a method": the console is what a person there wants.
    text += f"""
                        - match:
                            path: "/"
                            headers:
                              - name: ":method"
                                string_match: {{safe_regex: {{regex: "^(GET|HEAD)$"}}}}
                          redirect: {{path_redirect: "{CONSOLE_PATH}"}}
                          typed_per_filter_config:{edge.skipped_filters()}"""
    for name in console_files(folder):
        content_type = CONTENT_TYPES[Path(name).suffix]
        path = CONSOLE_PATH if name == "index.html" else CONSOLE_PATH + name
        text += _file_route(path, f"{served_dir.rstrip('/')}/{name}", content_type)
    return text


def total_bytes(folder: Path = CONSOLE_DIR) -> int:
    """What the console ships: the bytes of every file Envoy serves."""
    return sum((folder / name).stat().st_size for name in console_files(folder))
