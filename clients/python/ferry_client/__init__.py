"""Ferry's Python client: a thin, typed wrapper over the generated gRPC stubs."""

from ferry_client.client import FerryClient, FerryError

__all__ = ["FerryClient", "FerryError"]
