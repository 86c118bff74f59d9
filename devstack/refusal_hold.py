"""Refusals at a connection's share: a client that resends at once after a 429 gets its next calls late.

Envoy refuses a call over the gateways' in-flight bound itself (429 ``OVERLOADED``, ``Retry-After:
1``), in about a tenth of a millisecond. A closed-loop client that ignores the ``Retry-After`` and
resends at once therefore gets refused as fast as Envoy and it can run: 400 such clients, each on
a connection of its own and on the same 2 cores, drove Envoy to 3,400-4,200 refusals a second and
left inference half a core (goodput 0.30-0.35x, docs/benchmarks.md, session 10). Making each
refusal cheaper only makes them come back sooner; what bounds them is answering a client that
keeps sending after it was told to wait no faster than its share.

"A client" is a downstream connection (its peer address and port): the attackers share one
address and one key, as the clients behind a NAT or a tenant's many workers would, while a
connection is one client's (an HTTP/1.1 keep-alive client, a gRPC channel). A Lua filter keeps a
token bucket of refusals per connection, in each Envoy worker's Lua state (a connection lives on
one worker), debited by every answer that is a refusal with a ``Retry-After`` (Envoy's own
``OVERLOADED`` and the gateway's 429s alike). Its rate is the connection's share of
``refusals_per_s``, the refusals a worker answers at full speed a second, among the connections
refused in the last ``ACTIVE_S``: ``max(MIN_RATE_PER_S, refusals_per_s / connections)``, with a
burst of ``BURST``. A request that arrives on a connection whose bucket is empty is held (Envoy's
fault filter, a timer: no thread waits) until the bucket has a token again, at least ``hold_ms``,
before anything else looks at it, then goes on as any call: admitted if the bound has room by
then, else refused. A connection held has ignored the ``Retry-After`` past its burst, so from its
first hold on it gets 1/``PENALTY`` of its share (until it goes ``ACTIVE_S`` without a refusal):
the first hold already lasts until the penalised bucket has a token.
So:

- a closed-loop client's refusals come about once per ``PENALTY`` seconds, not once per round
  trip, and so do its calls: its CPU and Envoy's go back to the calls admitted;
- a client that waits as told (``Retry-After: 1``) is refused at most once a second a caller and
  never waits (``MIN_RATE_PER_S``), nor does one that sends rarely;
- a connection that carries many users' calls (a frontend's channel, an open loop) gets a large
  share while few connections are refused: with 16 such connections refused, 200 / 8 a worker is
  25 refusals a second each before any is held. Only while many connections are refused at once
  does each one's share fall to ``MIN_RATE_PER_S``. And each answer that is not a refusal (an
  admitted call's) gives its connection a token back: one whose calls are admitted as often as
  refused is never held, however many of its users' calls were refused. Once a connection was
  held, an admitted answer only keeps its next call from a hold (a closed loop gains no refusals);
- held calls are streams Envoy keeps: at most ``max_held`` are held at once (the fault filter's
  ``max_active_faults``, past which a call is not held); a worker that alone holds that many
  closes the connection of the next one to hold instead (drain: HTTP/2 GOAWAY, HTTP/1.1
  ``Connection: close`` once its answer is sent), so the client has to reconnect.

Behind a proxy that pools many users onto few connections to Envoy (an L7 load balancer), those
connections are the clients: raise ``FERRY_ENVOY_REFUSALS_PER_S`` there, or set it to 0 (off).
"""

from __future__ import annotations

#: Refusals a second each Envoy worker answers at full speed, shared among the connections it
#: refused in the last ACTIVE_S (``FERRY_ENVOY_REFUSALS_PER_S``; 0: no connection is ever held).
REFUSALS_PER_S = 200
#: How long a call from a connection past its share is held before Envoy looks at it: the
#: ``Retry-After`` the refusal gave, so a client that waited as told would not notice.
HOLD_MS = 1000
#: Calls held at once, across Envoy's workers (the fault filter's ``max_active_faults``).
MAX_HELD = 512
#: A connection is never held while it is refused at most this often: a caller that waits the
#: ``Retry-After`` (1 s) of each refusal.
MIN_RATE_PER_S = 1.0
#: Refusals a connection gets at full speed before its rate counts: enough for a client that waits
#: the Retry-After to send a little early now and then, and few, since every connection of a flood
#: gets them (session 11's 10 were 4,000 refusals at full speed for 400 connections).
BURST = 3
#: A connection counts among those sharing ``refusals_per_s`` while it was refused this recently.
ACTIVE_S = 10.0
#: A connection held (it kept sending past its share) gets this fraction of its share from its first
#: hold on, until it goes 10 s without a refusal: the bucket alone would let a closed loop that
#: resends at once go on at one call a second per connection, each a refusal.
PENALTY = 4
#: The longest hold: until the connection's bucket has a token again, within this.
MAX_HOLD_MS = 10_000
#: A connection is forgotten (its bucket full again, its penalty gone) once it goes this long
#: without a refusal: not sooner than ACTIVE_S, or a held connection, refused once per hold, would
#: lose its penalty during its hold and get its burst again.
FORGET_MS = round(1000 * max(ACTIVE_S, BURST / MIN_RATE_PER_S))
#: Connections a worker tracks at most; past it, it forgets them all (they get their burst again):
#: a bound on the Lua state's memory under a flood of new connections.
MAX_TRACKED = 65536
#: The fault filter reads a request's hold, in milliseconds, from this header; the Lua filter
#: removes any value a client sent (and the percentage header, which could turn a hold off).
DELAY_HEADER = "x-envoy-fault-delay-request"
LUA_FILTER = "ferry.refusal_hold"
FAULT_FILTER = "envoy.filters.http.fault"


def lua_source(refusals_per_s: int, hold_ms: int, max_held: int) -> str:
    """The Lua filter's script (no ``{{`` in it: the Helm chart reads the config as a template)."""
    return f"""
-- Per worker: connection (peer address:port) -> its bucket of refusals; times in ms.
local conns, tracked, active, swept = {{}}, 0, 0, 0
-- The end of each hold this worker placed, oldest first: how many it holds now.
local held, head, tail = {{}}, 1, 0
local min, max = math.min, math.max
-- A connection's share a ms; one that was held already gets 1/PENALTY of it.
local function rate(c)
  local share = max({MIN_RATE_PER_S}, {refusals_per_s} / max(1, active)) / 1000
  if c.held then return share / {PENALTY} end
  return share
end
local function refill(c, now)
  if now > c.stamp then
    c.tokens = min({BURST}, c.tokens + (now - c.stamp) * rate(c))
    c.stamp = now
  end
end
-- Forgets connections whose bucket refilled, and counts those refused in the last ACTIVE_S.
local function sweep(now)
  if now - swept < 250 then return end
  swept = now
  local n, kept = 0, 0
  for peer, c in pairs(conns) do
    if now - c.last > {FORGET_MS} then
      conns[peer] = nil
    else
      kept = kept + 1
      if now - c.last <= {1000 * ACTIVE_S:.0f} then n = n + 1 end
    end
  end
  tracked, active = kept, n
end
function envoy_on_request(handle)
  local headers = handle:headers()
  headers:remove("{DELAY_HEADER}")
  headers:remove("{DELAY_HEADER}-percentage")
  local c = conns[handle:streamInfo():downstreamDirectRemoteAddress()]
  if c == nil then return end
  local now = handle:timestamp()
  refill(c, now)
  if c.tokens >= 1 then return end
  while head <= tail and held[head] <= now do
    held[head] = nil
    head = head + 1
  end
  if tail - head + 1 >= {max_held} then
    handle:streamInfo():drainConnectionUponCompletion()
    return
  end
  -- Past its burst, the connection has ignored the Retry-After: its penalty starts with this hold,
  -- which lasts until the bucket has a token again (at least hold_ms, at most MAX_HOLD_MS).
  c.held = true
  local wait = math.floor(max({hold_ms}, min({MAX_HOLD_MS}, (1 - c.tokens) / rate(c))))
  tail = tail + 1
  held[tail] = now + wait
  headers:add("{DELAY_HEADER}", tostring(wait))
end
function envoy_on_response(handle)
  local headers = handle:headers()
  local peer = handle:streamInfo():downstreamDirectRemoteAddress()
  local c = conns[peer]
  local refusal = headers:get("retry-after") ~= nil
    and (headers:get(":status") == "429" or headers:get("grpc-status") == "8")
  if not refusal then
    -- An answer that is not a refusal (an admitted call's) earns its connection a refusal at full
    -- speed: one that carries many users' calls, admitted as often as refused, is never held. Once
    -- held (a closed loop past its burst) it only keeps its next call from a hold.
    if c ~= nil and c.tokens < {BURST} then
      refill(c, handle:timestamp())
      if c.held then
        c.tokens = max(c.tokens, 1)
      else
        c.tokens = min({BURST}, c.tokens + 1)
      end
    end
    return
  end
  local now = handle:timestamp()
  sweep(now)
  if c == nil then
    if tracked >= {MAX_TRACKED} then
      conns, tracked = {{}}, 0
    end
    c = {{ tokens = {BURST}, stamp = now, last = 0 }}
    conns[peer] = c
    tracked = tracked + 1
  else
    refill(c, now)
  end
  if now - c.last > {1000 * ACTIVE_S:.0f} then active = active + 1 end
  c.last = now
  c.tokens = max(0, c.tokens - 1)
end
"""


def filters(refusals_per_s: int, hold_ms: int, max_held: int) -> str:
    """The Lua filter and the fault filter that holds, as http_filters list items; none when off."""
    if refusals_per_s <= 0:
        return ""
    # No blank lines: the Helm chart indents every line of the config, blank ones too.
    pad = " " * 26
    source = lua_source(refusals_per_s, hold_ms, max_held)
    indented = "\n".join(pad + line for line in source.strip().splitlines() if line.strip())
    return f"""
                  # A connection refused faster than its share has its next calls held
                  # (devstack/refusal_hold.py): the Lua filter decides, the fault filter holds.
                  - name: {LUA_FILTER}
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
                      default_source_code:
                        inline_string: |
{indented}
                  - name: {FAULT_FILTER}
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
                      delay:
                        header_delay: {{}}
                        percentage: {{numerator: 100, denominator: HUNDRED}}
                      max_active_faults: {max_held}"""
