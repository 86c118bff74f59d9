"""What the handlers use, built by ``GatewayService.start`` once every dependency answers."""

from __future__ import annotations

from dataclasses import dataclass

from services.gateway.auth import Authenticator
from services.gateway.catalog import ModelCatalog
from services.gateway.job_manager import JobManager
from services.gateway.keys import KeyAdmin
from services.gateway.model_admin import ModelAdmin
from services.gateway.open_inference import OpenInference
from services.gateway.predictor import Predictor
from services.gateway.records import Records
from services.gateway.settings import GatewaySettings


@dataclass(frozen=True)
class Components:
    """The gateway's logic, wired to live connections."""

    auth: Authenticator
    catalog: ModelCatalog
    predictor: Predictor
    jobs: JobManager
    records: Records
    open_inference: OpenInference
    keys: KeyAdmin
    models: ModelAdmin
    settings: GatewaySettings


class ComponentsSlot:
    """Holds the components; servicers are registered before ``start`` builds them."""

    def __init__(self) -> None:
        self._components: Components | None = None

    def fill(self, components: Components) -> None:
        """Makes ``components`` available to the handlers."""
        self._components = components

    def get(self) -> Components:
        """Returns the components; the readiness gate lets no call through before ``fill``."""
        if self._components is None:
            raise RuntimeError("gateway handler ran before start() finished; the readiness gate is bypassed")
        return self._components
