"""Ferry's Python client: a thin, typed wrapper over the generated gRPC stubs."""

from ferry_client.client import FerryClient, FerryError, payload_input, text_input

__all__ = ["FerryClient", "FerryError", "payload_input", "text_input"]
