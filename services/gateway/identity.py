"""Who is calling: the authenticated caller of the current RPC, and what each method needs.

The gateway's ``AdmissionInterceptor`` authenticates every call once, before its handler runs, and
sets ``Caller`` here; handlers read it with ``tenant()`` (or ``caller()``) instead of each
repeating the authentication preamble.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from enum import Enum

from services.common import scopes
from services.common.errors import PermissionDenied


@dataclass(frozen=True)
class Caller:
    """An authenticated API key: its tenant, what it may do and its own rate limit."""

    tenant: str
    scopes: frozenset[str]
    key_id: str = ""
    """The key's UUID ('' for a key store did not name); rate limits are kept per key."""
    rate_per_s: float = 0.0
    """The key's own rate limit; 0 means the gateway's default."""
    burst: int = 0
    """The key's own burst; 0 means the gateway's default."""

    def may(self, needed: frozenset[str]) -> bool:
        """Whether the key has one of the ``needed`` scopes (admin has them all)."""
        return scopes.ADMIN in self.scopes or not needed.isdisjoint(self.scopes)


_caller: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("ferry_caller", default=None)


def caller() -> Caller:
    """The caller of the RPC being handled.

    Raises:
        RuntimeError: no call was authenticated in this context (a handler outside the interceptor).
    """
    found = _caller.get()
    if found is None:
        raise RuntimeError("no authenticated caller: the gateway's AdmissionInterceptor did not run")
    return found


def tenant() -> str:
    """The tenant of the RPC being handled."""
    return caller().tenant


def set_caller(found: Caller) -> contextvars.Token[Caller | None]:
    """Makes ``found`` the caller of the current call (the interceptor resets it afterwards)."""
    return _caller.set(found)


def reset_caller(token: contextvars.Token[Caller | None]) -> None:
    """Forgets the caller set by ``set_caller``."""
    _caller.reset(token)


class RouteClass(Enum):
    """How a method is admitted: its default deadline and whether it counts as in flight."""

    PREDICT = "predict"
    JOBS = "jobs"
    READ = "read"
    STREAM = "stream"
    """Long-lived server streams (WatchJob): no default deadline, not counted in flight."""
    LOAD = "load"
    """Loading or unloading a model (admin): no default deadline, as a load may take minutes."""


@dataclass(frozen=True)
class Route:
    """What a method needs: one of ``scopes``, and how it is admitted."""

    scopes: frozenset[str]
    kind: RouteClass
    held: bool = False
    """Whether a call stays open for long (a watch, a download, an upload): it counts among its
    tenant's streams (``admission.TenantStreams``) and its key is checked again as it goes."""


def _route(kind: RouteClass, *needed: str, held: bool = False) -> Route:
    return Route(frozenset(needed), kind, held)


_READ = _route(RouteClass.READ, scopes.READ)
_JOB_READ = _route(RouteClass.READ, scopes.READ, scopes.JOBS)
_PREDICT = _route(RouteClass.PREDICT, scopes.PREDICT)
_JOB_STREAM = _route(RouteClass.STREAM, scopes.READ, scopes.JOBS, held=True)
_OIP_READ = _route(RouteClass.READ, scopes.READ, scopes.PREDICT)
_ADMIN = _route(RouteClass.READ, scopes.ADMIN)
_MODEL_ADMIN = _route(RouteClass.LOAD, scopes.ADMIN)

#: Per service: the route of its methods unless ``_METHODS`` says otherwise. A service missing
#: here needs admin: a new public service is closed until someone decides who may call it.
_SERVICES = {
    "ferry.models.v1.ModelService": _READ,
    "ferry.predictions.v1.PredictionService": _READ,
    "ferry.jobs.v1.JobService": _route(RouteClass.JOBS, scopes.JOBS),
    "inference.GRPCInferenceService": _OIP_READ,
    "ferry.openinference.v1.OpenInferenceRestService": _OIP_READ,
    "ferry.admin.v1.KeyService": _ADMIN,
}
_METHODS = {
    "/ferry.models.v1.ModelService/Predict": _PREDICT,
    "/ferry.models.v1.ModelService/BatchPredict": _PREDICT,
    "/inference.GRPCInferenceService/ModelInfer": _PREDICT,
    "/ferry.openinference.v1.OpenInferenceRestService/InferModel": _PREDICT,
    "/ferry.models.v1.ModelService/LoadModel": _MODEL_ADMIN,
    "/ferry.models.v1.ModelService/UnloadModel": _MODEL_ADMIN,
    "/ferry.models.v1.ModelService/SetDefaultVersion": _ADMIN,
    "/inference.GRPCInferenceService/RepositoryIndex": _ADMIN,
    "/inference.GRPCInferenceService/RepositoryModelLoad": _MODEL_ADMIN,
    "/inference.GRPCInferenceService/RepositoryModelUnload": _MODEL_ADMIN,
    "/ferry.openinference.v1.OpenInferenceRestService/RepositoryIndex": _ADMIN,
    "/ferry.openinference.v1.OpenInferenceRestService/RepositoryModelLoad": _MODEL_ADMIN,
    "/ferry.openinference.v1.OpenInferenceRestService/RepositoryModelUnload": _MODEL_ADMIN,
    "/ferry.jobs.v1.JobService/GetJob": _JOB_READ,
    "/ferry.jobs.v1.JobService/ListJobs": _JOB_READ,
    "/ferry.jobs.v1.JobService/ListJobItems": _JOB_READ,
    "/ferry.jobs.v1.JobService/WatchJob": _JOB_STREAM,
    "/ferry.jobs.v1.JobService/GetJobResults": _JOB_STREAM,
    "/ferry.jobs.v1.JobService/GetJobNotebook": _JOB_READ,
    "/ferry.jobs.v1.JobService/CreateUpload": _route(RouteClass.JOBS, scopes.JOBS, held=True),
}


def route(method: str) -> Route:
    """The route of a full gRPC method name ("/package.Service/Method")."""
    found = _METHODS.get(method)
    if found is not None:
        return found
    service = method.lstrip("/").partition("/")[0]
    return _SERVICES.get(service, _ADMIN)


def check_scope(found: Caller, method: str, needed: Route) -> None:
    """Raises PermissionDenied unless the caller's key may call ``method``."""
    if found.may(needed.scopes):
        return
    wanted = " or ".join(repr(s) for s in sorted(needed.scopes))
    has = ", ".join(sorted(found.scopes)) or "none"
    raise PermissionDenied(
        f"this API key may not call {method.lstrip('/')}: it needs the {wanted} scope and has {has}; "
        "ask an admin for a key with that scope (`ferry keys create --scopes ...`)",
        reason="MISSING_SCOPE",
        metadata={"method": method.lstrip("/"), "needed": ",".join(sorted(needed.scopes))},
    )
