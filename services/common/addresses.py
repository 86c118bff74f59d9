"""Which addresses and host names an image URL may lead the gateway to (server-side request forgery).

An address is fetched from only if it is public (``is_global``, not multicast) or inside a network
the operator allowed. IPv6 has several ways to carry an IPv4 address inside it, and a gateway on a
network with NAT64, 6to4 relays or a Teredo tunnel connects through them to that IPv4 address:
``[64:ff9b::a9fe:a9fe]`` reaches the cloud metadata service at 169.254.169.254 where a NAT64
gateway exists. So such an address is judged by every IPv4 address it carries (all must be
allowed), never by its IPv6 form, which Python's ``is_global`` calls public:

- IPv4-mapped ``::ffff:0:0/96`` and IPv4-translated ``::ffff:0:0:0/96``, IPv4-compatible ``::/96``;
- NAT64, the well-known ``64:ff9b::/96`` and the local-use ``64:ff9b:1::/48`` (RFC 8215), whose
  translator may use any RFC 6052 prefix length within it: each possible position is judged;
- 6to4 ``2002::/16`` (the IPv4 after the prefix);
- Teredo ``2001::/32`` (its server and its client address).

Host names are checked before resolution: IDNA-encodable, labels of 1 to 63 letters, digits, ``-``
or ``_``, at most 253 characters. Anything else is a malformed URL (400), not an error of ours.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_MAPPED = ipaddress.ip_network("::ffff:0:0/96")
_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")
_COMPATIBLE = ipaddress.ip_network("::/96")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
#: RFC 6052 prefix lengths a local-use NAT64 translator may use inside 64:ff9b:1::/48.
_NAT64_LOCAL_PREFIXES = (48, 56, 64, 96)
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
MAX_HOST_CHARS = 253


def _low32(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)


def rfc6052_ipv4(address: ipaddress.IPv6Address, prefix_len: int) -> ipaddress.IPv4Address:
    """The IPv4 address an RFC 6052 address of that prefix length carries (bits 64-71 skipped)."""
    value = int(address)
    # Drop the reserved "u" octet (bits 64-71): 120 bits remain, the IPv4 right after the prefix.
    squeezed = ((value >> 64) << 56) | (value & ((1 << 56) - 1))
    start = prefix_len if prefix_len <= 64 else prefix_len - 8
    return ipaddress.IPv4Address((squeezed >> (120 - start - 32)) & 0xFFFFFFFF)


def embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """Every IPv4 address ``address`` carries (see the module docstring); empty for a plain IPv6 one."""
    if address in _MAPPED or address in _TRANSLATED or address in _COMPATIBLE or address in _NAT64:
        return [_low32(address)]
    if address in _NAT64_LOCAL:
        return [rfc6052_ipv4(address, length) for length in _NAT64_LOCAL_PREFIXES]
    if address.sixtofour is not None:
        return [address.sixtofour]
    if address.teredo is not None:
        return list(address.teredo)
    return []


def _refused(address: Address, allowed: Sequence[Network]) -> bool:
    if any(address in network for network in allowed if network.version == address.version):
        return False
    return not address.is_global or address.is_multicast


def forbidden(address: Address, allowed: Sequence[Network] = ()) -> bool:
    """Whether the gateway must not connect to ``address``: not public, and not admitted.

    An IPv6 address that carries IPv4 addresses is judged by them alone.
    """
    if isinstance(address, ipaddress.IPv6Address):
        carried = embedded_ipv4(address)
        if carried:
            return any(_refused(v4, allowed) for v4 in carried)
    return _refused(address, allowed)


def ascii_host(host: str) -> str | None:
    """``host`` as the ASCII name (or address literal) to resolve; None when it is malformed.

    An IP literal is returned as is. A name must encode to IDNA and be made of DNS labels.
    """
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
        return host
    except ValueError:
        pass
    try:
        encoded = host.encode("idna").decode("ascii").lower()
    except (UnicodeError, ValueError):
        return None
    labels = encoded.removesuffix(".").split(".")
    if len(encoded) > MAX_HOST_CHARS or not all(_LABEL.fullmatch(label) for label in labels):
        return None
    return encoded
