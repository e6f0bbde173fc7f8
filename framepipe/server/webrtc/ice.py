"""Which local addresses a peer connection offers as ICE host candidates.

aiortc gathers its host candidates through aioice, which offers every address of every
interface except loopback and has no option to choose. :func:`offer_host_addresses` makes it
offer exactly the given ones, for every peer connection of this process: loopback for a peer on
the same machine (tests, benchmarks, a local demo), one interface on a host with several. Empty
restores aioice's own choice.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence

from framepipe.protocol.errors import InvalidPayloadError

__all__ = ["offer_host_addresses"]

_original: Callable[[bool, bool], list[str]] | None = None  # aioice's own


def offer_host_addresses(addresses: Sequence[str]) -> None:
    """Offer ``addresses`` (IPv4 or IPv6 literals) as this process's host candidates; an empty
    sequence gives aioice's default back."""
    import aioice.ice

    global _original
    if _original is None:
        _original = aioice.ice.get_host_addresses
    chosen = []
    for address in addresses:
        try:
            chosen.append(ipaddress.ip_address(address))
        except ValueError:
            raise InvalidPayloadError(
                f"ICE host address {address!r} is not an IP address"
            ) from None
    if not chosen:
        aioice.ice.get_host_addresses = _original  # type: ignore[assignment]
        return

    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [
            str(a) for a in chosen if (a.version == 4 and use_ipv4) or (a.version == 6 and use_ipv6)
        ]

    # aioice looks the function up at each gathering: replacing it is the one lever there is.
    aioice.ice.get_host_addresses = host_addresses
