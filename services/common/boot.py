"""A service's ``__main__``: run it, and turn a configuration mistake into one line, not a traceback.

A setting the environment gets wrong (``FERRY_GATEWAY_MAX_TOP_K=abc``, a model name mistyped in
``FERRY_INFERENCE_MODELS``) ended the process with a 25-line traceback, which ``ferry up`` printed
whole ("Ferry failed to start: inference exited … log:") with the useful line last. Here it is one
line naming the environment variable, and exit status 2 (a usage error, as a shell's).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from pydantic import ValidationError
from pydantic_settings import BaseSettings

#: Exit status of a process whose configuration is wrong (the supervisor shows its log line).
CONFIG_EXIT = 2


class ConfigurationError(ValueError):
    """A setting that parses but names something that is not there (an unknown model); its
    message says which setting and what it may be."""


def settings_message(err: ValidationError, settings: type[BaseSettings]) -> str:
    """Each wrong setting of ``err`` as ``ENV_NAME='value': what is wrong``, by environment name."""
    prefix = str(settings.model_config.get("env_prefix") or "")
    wrong = []
    for error in err.errors():
        if not error["loc"]:
            # A check across settings (a bound from services/common/limits.py) has no field of its
            # own: its message names the variable already, and its input is every setting given,
            # which printed as "FERRY_GATEWAY_={'max_top_k': '5000'}: Value error, ...".
            wrong.append(str(error.get("ctx", {}).get("error") or error["msg"]))
            continue
        name = prefix + "_".join(str(part) for part in error["loc"]).upper()
        wrong.append(f"{name}={error.get('input')!r}: {error['msg']}")
    return "; ".join(wrong)


def run(start: Callable[[], Coroutine[Any, Any, Any]], settings: type[BaseSettings]) -> None:
    """Runs ``start()`` (which reads ``settings`` from the environment) to its end.

    A ValidationError of the settings or a ConfigurationError exits with CONFIG_EXIT and one line
    on stderr; anything else propagates (a bug keeps its traceback).
    """
    service = settings.__name__.removesuffix("Settings").lower()
    try:
        asyncio.run(start())
    except ValidationError as err:
        print(f"ferry-{service}: configuration error: {settings_message(err, settings)}", file=sys.stderr)
        sys.exit(CONFIG_EXIT)
    except ConfigurationError as err:
        print(f"ferry-{service}: configuration error: {err}", file=sys.stderr)
        sys.exit(CONFIG_EXIT)
