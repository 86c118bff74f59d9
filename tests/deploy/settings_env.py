"""The environment variables each service reads, taken from its pydantic settings class.

Compose, the chart and ``ferry up`` write ``FERRY_<SERVICE>_<FIELD>`` names by hand; these tests
check each against the class, so a renamed or removed field fails here, not silently in a deploy.
"""

from __future__ import annotations

from pydantic import AliasChoices
from pydantic_settings import BaseSettings

from services.gateway.settings import GatewaySettings
from services.inference.settings import InferenceSettings
from services.jobs.settings import JobsSettings
from services.store.settings import StoreSettings

SETTINGS: dict[str, type[BaseSettings]] = {
    "gateway": GatewaySettings,
    "inference": InferenceSettings,
    "jobs": JobsSettings,
    "store": StoreSettings,
}

#: Read by every service outside its settings class (services/common/logs.py, failpoints.py).
PROCESS_WIDE = frozenset({"FERRY_LOG_FORMAT", "FERRY_FAILPOINTS", "FERRY_FAILPOINTS_DIR", "PYTHONUNBUFFERED"})


def env_names(service: str) -> frozenset[str]:
    """Every variable ``service``'s settings class reads: prefix + field, and each field's aliases."""
    settings = SETTINGS[service]
    prefix = str(settings.model_config.get("env_prefix", "")).upper()
    names: set[str] = set()
    for name, field in settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names |= {choice.upper() for choice in alias.choices if isinstance(choice, str)}
        elif isinstance(alias, str):
            names.add(alias.upper())
        else:
            names.add(f"{prefix}{name.upper()}")
    return frozenset(names)


def unknown_names(service: str, env: dict[str, str] | list[str]) -> list[str]:
    """The ``FERRY_*`` names in ``env`` that ``service`` does not read (typos, renamed fields)."""
    known = env_names(service) | PROCESS_WIDE
    return sorted(name for name in env if name.startswith("FERRY_") and name not in known)


def default_of(service: str, field: str) -> object:
    """The default of one settings field (``grpc_port``)."""
    return SETTINGS[service].model_fields[field].default
