"""The real Envoy, rendered with its refusal hold (devstack/refusal_hold.py), in front of a gRPC
server standing in for a gateway whose in-flight bound (1) one hung call fills: a client that
resends at once after each 429 gets its calls held once it is past its share of refusals; a client
on another connection that waits the Retry-After does not, and neither does any client when the
hold is off.

The figures asserted are the mechanism's, with room for a loaded machine: a held call waits
HOLD_MS before Envoy looks at it, an unheld refusal takes milliseconds.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from devstack import refusal_hold
from devstack.envoy import EnvoyOptions, render
from devstack.infra import free_port
from tests.deploy.test_edge_envoy import (
    _active_calls,
    _wait_until_ready,
    holding_gateway,
    running_envoy,
    stand_in_gateway,
)

__all__ = ["holding_gateway"]  # a fixture: a gRPC server as the gateway, whose GetModel never answers

#: How long the rendered Envoy holds a call past its connection's share (long enough to tell from
#: an unheld refusal on a loaded machine, short enough for a test).
HOLD_MS = 2000
#: Refusals a second the worker answers at full speed: one connection alone gets the floor's share
#: (refusal_hold.MIN_RATE_PER_S), so its calls past the burst are held.
REFUSALS_PER_S = 1
GET_MODEL = "/ferry.models.v1.ModelService/GetModel"
LIST_MODELS = "/ferry.models.v1.ModelService/ListModels"
#: Refusals a connection gets at full speed before its calls are held, as docs/reliability.md says
#: (session 11's 10 were 4,000 at full speed for a flood of 400 connections).
FAST_REFUSALS = 3


def _channel(target: str) -> grpc.Channel:
    """A channel with a connection of its own (channels to one target would otherwise share one)."""
    return grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])


def _refused(channel: grpc.Channel) -> tuple[str, float]:
    """One GetModel: its ErrorInfo reason (it must be refused) and how long its answer took."""
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as refused:
        channel.unary_unary(GET_MODEL)(b"", timeout=60)
    took = time.monotonic() - started
    call = refused.value
    assert isinstance(call, grpc.Call) and call.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, call
    status, info = rpc_status.from_call(call), error_details_pb2.ErrorInfo()
    assert status is not None and status.details[0].Unpack(info), call
    return info.reason, took


def _stats(admin: str, pattern: str) -> dict[str, int]:
    """Envoy's counters whose names match ``pattern`` (a regex), by name."""
    with urllib.request.urlopen(f"{admin}/stats?filter={pattern}", timeout=10) as answer:
        lines = answer.read().decode().splitlines()
    return {name: int(value) for name, value in (line.split(": ", 1) for line in lines)}


def _held(admin: str) -> int:
    """Calls Envoy's fault filter has held on the public listener."""
    return sum(_stats(admin, "^http\\.public\\.fault\\.delays_injected$").values())


def _bounded_edge(
    folder: Path, gateway: int, refusals_per_s: int, max_held: int = refusal_hold.MAX_HELD
) -> Iterator[tuple[str, str]]:
    """Envoy for one gateway whose in-flight bound (1) one held call fills; yields the gRPC target
    and the admin URL while that call is in flight."""
    admin = free_port()
    options = EnvoyOptions(
        listen_port=free_port(),
        admin_port=admin,
        gateway_port=gateway,
        gateway_max_inflight=1,
        refusals_per_s=refusals_per_s,
        refusal_hold_ms=HOLD_MS,
        max_held=max_held,
    )
    with running_envoy(folder, options) as url:
        _wait_until_ready(url)
        target, admin_url = url.removeprefix("http://"), f"http://127.0.0.1:{admin}"
        with _channel(target) as holder:
            filling = holder.unary_unary(GET_MODEL).future(b"", timeout=120)
            deadline = time.monotonic() + 10
            while _active_calls(admin_url) < 1:
                assert time.monotonic() < deadline, "the filling call never reached the gateway"
                time.sleep(0.05)
            yield target, admin_url
            filling.cancel()


@pytest.fixture(scope="module")
def held_edge(tmp_path_factory: pytest.TempPathFactory, holding_gateway: int) -> Iterator[tuple[str, str]]:
    yield from _bounded_edge(tmp_path_factory.mktemp("held-edge"), holding_gateway, REFUSALS_PER_S)


def test_a_client_that_resends_at_once_gets_its_refusals_held_and_a_patient_one_does_not(
    held_edge: tuple[str, str],
) -> None:
    target, admin = held_edge
    hammered: list[tuple[str, float]] = []
    hammer_s: list[float] = []
    extra = 3  # calls past the burst

    def hammer() -> None:
        started = time.monotonic()
        with _channel(target) as channel:
            hammered.extend(_refused(channel) for _ in range(refusal_hold.BURST + extra))
        hammer_s.append(time.monotonic() - started)

    hammering = threading.Thread(target=hammer)
    hammering.start()
    # Meanwhile another client, on its own connection, waits the Retry-After (1 s) after each 429,
    # past its burst: it is refused no faster than its share, so none of its calls is held.
    patient = []
    with _channel(target) as channel:
        for _ in range(refusal_hold.BURST + 2):
            patient.append(_refused(channel))
            time.sleep(1.0)
    hammering.join(120)
    # Every call is still answered OVERLOADED: a held call is refused late, not lost or reset.
    assert {reason for reason, _ in hammered + patient} == {"OVERLOADED"}, hammered + patient
    assert len(hammered) == refusal_hold.BURST + extra
    # The burst is answered at full speed, and the next call is held; past it, the client's calls
    # wait their hold (the bucket refills during one, so every other call is held).
    fast = [s < HOLD_MS / 1000 * 0.5 for _, s in hammered]
    assert fast[: FAST_REFUSALS + 1] == [True] * FAST_REFUSALS + [False], hammered
    slow = [s for _, s in hammered if s >= HOLD_MS / 1000 * 0.9]
    assert len(slow) >= extra - 1, hammered
    assert hammer_s[0] >= (extra - 1) * HOLD_MS / 1000, hammered
    assert _held(admin) >= extra - 1
    # The patient client's refusals were never held.
    assert all(s < HOLD_MS / 1000 * 0.5 for _, s in patient), patient


def test_with_the_hold_off_a_client_that_resends_at_once_is_refused_at_full_speed(
    tmp_path: Path, holding_gateway: int
) -> None:
    """FERRY_ENVOY_REFUSALS_PER_S=0 renders neither filter: session 10's edge, refusals at once."""
    for target, admin in _bounded_edge(tmp_path, holding_gateway, 0):
        with _channel(target) as channel:
            answers = [_refused(channel) for _ in range(refusal_hold.BURST + 3)]
        assert all(s < HOLD_MS / 1000 * 0.5 for _, s in answers), answers
        assert _held(admin) == 0


def test_past_the_cap_of_held_calls_a_worker_closes_the_connection(
    tmp_path: Path, holding_gateway: int
) -> None:
    """A connection past its share, with more calls at once than the cap lets Envoy hold (here 1):
    the first is held, the others are answered at once and the connection is drained (HTTP/2
    GOAWAY), so the client's next call opens a new connection."""
    connections = "^http\\.public\\.downstream_cx_http2_total$"
    for target, admin in _bounded_edge(tmp_path, holding_gateway, REFUSALS_PER_S, max_held=1):
        with _channel(target) as channel:
            for _ in range(refusal_hold.BURST):
                _refused(channel)
            opened = sum(_stats(admin, connections).values())
            call = channel.unary_unary(GET_MODEL)
            pending = [call.future(b"", timeout=60) for _ in range(3)]
            errors = [future.exception(timeout=60) for future in pending]
            codes = [e.code() if isinstance(e, grpc.Call) else e for e in errors]
            assert codes == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 3, errors
            assert _held(admin) >= 1
            _refused(channel)  # on a new connection (gRPC may have opened it on the GOAWAY already)
            assert sum(_stats(admin, connections).values()) == opened + 1


def test_the_hold_comes_before_any_filter_that_reads_a_body_and_is_on_every_route() -> None:
    """After gRPC-Web's filter (a browser's call is held as the gRPC call it carries) and before
    the buffer filter (a held call's body is not read: HTTP/2 flow control bounds what waits); off
    on no route; and with FERRY_ENVOY_REFUSALS_PER_S=0 not there at all (session 10's edge)."""

    def chain(options: EnvoyOptions) -> list[str]:
        manager = yaml.safe_load(render(options))["static_resources"]["listeners"][0]["filter_chains"][0][
            "filters"
        ][0]["typed_config"]
        return [item["name"] for item in manager["http_filters"]]

    names = chain(EnvoyOptions())
    lua, fault = names.index(refusal_hold.LUA_FILTER), names.index(refusal_hold.FAULT_FILTER)
    assert (
        names.index("envoy.filters.http.grpc_web")
        < lua
        == fault - 1
        < names.index("envoy.filters.http.buffer")
    )
    text = render(EnvoyOptions())
    assert text.count(f"{refusal_hold.LUA_FILTER}:") == 0 and text.count(f"{refusal_hold.FAULT_FILTER}:") == 0
    off = chain(EnvoyOptions(refusals_per_s=0))
    assert refusal_hold.LUA_FILTER not in off and refusal_hold.FAULT_FILTER not in off


@pytest.fixture(scope="module")
def refusing_gateway() -> Iterator[int]:
    """A gRPC server as the gateway whose GetModel it refuses itself (RESOURCE_EXHAUSTED with a
    ``retry-after``, as a gateway's limiter does) and whose ListModels it answers."""

    def refuse(request: bytes, context: grpc.ServicerContext) -> bytes:
        context.set_trailing_metadata((("retry-after", "1"),))
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "over the limit")

    with stand_in_gateway({"GetModel": refuse, "ListModels": lambda request, context: b""}) as port:
        yield port


def test_a_connection_whose_calls_are_admitted_as_often_as_refused_is_not_held(
    tmp_path: Path, refusing_gateway: int
) -> None:
    """A connection that carries many users' calls (a frontend's channel), refused far past its
    burst and its share (1 a second) but with an admitted call before each refusal: none of its
    calls is held. The same connection refused with nothing admitted between is held past its
    burst: the gateway's refusals count, as Envoy's do."""
    admin = free_port()
    options = EnvoyOptions(
        listen_port=free_port(),
        admin_port=admin,
        gateway_port=refusing_gateway,
        refusals_per_s=REFUSALS_PER_S,
        refusal_hold_ms=HOLD_MS,
    )
    with running_envoy(tmp_path, options) as url:
        _wait_until_ready(url)
        admin_url = f"http://127.0.0.1:{admin}"

        def refused(channel: grpc.Channel) -> float:
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as error:
                channel.unary_unary(GET_MODEL)(b"", timeout=60)
            assert isinstance(error.value, grpc.Call)
            assert error.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, error.value
            return time.monotonic() - started

        with _channel(url.removeprefix("http://")) as channel:
            mixed = []
            for _ in range(4 * refusal_hold.BURST):
                started = time.monotonic()
                channel.unary_unary(LIST_MODELS)(b"", timeout=60)
                mixed.extend((time.monotonic() - started, refused(channel)))
            assert all(s < HOLD_MS / 1000 * 0.5 for s in mixed), mixed
            assert _held(admin_url) == 0
            alone = [refused(channel) for _ in range(refusal_hold.BURST + 2)]
        assert any(s >= HOLD_MS / 1000 * 0.9 for s in alone), alone
        assert _held(admin_url) >= 1
