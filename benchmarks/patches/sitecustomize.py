"""Patches module attributes of a stack's processes for a benchmark's "before" variant.

A benchmark puts this folder and the checkout's root on a variant's PYTHONPATH and sets
``FERRY_BENCH_PATCH`` to ``;``-separated ``<argv module> <module>.<ATTR>=<Python literal>``
entries: in each process started as ``python -m <argv module>`` (``services.gateway``), the
attribute is set once the interpreter starts, before the service imports it
(``services.gateway services.gateway.uploads.PUT_CONCURRENCY=8``). A measurement aid only.
"""

import ast
import importlib
import os
import sys

for entry in filter(None, os.environ.get("FERRY_BENCH_PATCH", "").split(";")):
    program, assignment = entry.split(" ", 1)
    if program not in sys.orig_argv:
        continue
    target, value = assignment.split("=", 1)
    module_name, attribute = target.rsplit(".", 1)
    setattr(importlib.import_module(module_name), attribute, ast.literal_eval(value))
