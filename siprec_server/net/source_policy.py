"""Which signalling sources the recorder serves, and how far it trusts them (sans-IO).

`sip.allow_from` lists SRC addresses and networks; the entry "any" admits every other source.
A source matched by an explicit entry is *trusted*: one SBC address carries every legitimate
call, so it is limited only by the global caps. A source admitted only through "any" is
*untrusted*: per-source caps on connections and sessions keep one noisy address from taking
what the SBCs need. Anything else is refused before a byte of it is parsed (UDP datagrams are
dropped without an answer, so a spoofed source cannot turn the recorder into a reflector; TCP
and TLS connections are closed at once).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import Enum

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

ANY = "any"
LOOPBACK = ("127.0.0.0/8", "::1")


class Admission(Enum):
    TRUSTED = "trusted"
    UNTRUSTED = "untrusted"
    REFUSED = "refused"


def parse_networks(entries: tuple[str, ...]) -> tuple[tuple[Network, ...], bool]:
    """The networks of `sip.allow_from`, and whether "any" is among them; ValueError names a
    bad entry."""
    networks: list[Network] = []
    admit_any = False
    for entry in entries:
        text = entry.strip()
        if text.lower() == ANY:
            admit_any = True
            continue
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise ValueError(f"{entry!r} is not an address, a network or \"any\"") from None
    return tuple(networks), admit_any


@dataclass(frozen=True, slots=True)
class SourcePolicy:
    networks: tuple[Network, ...]
    admit_any: bool = False

    @classmethod
    def from_config(cls, entries: tuple[str, ...]) -> SourcePolicy:
        networks, admit_any = parse_networks(entries)
        return cls(networks, admit_any)

    def admission(self, host: str) -> Admission:
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return Admission.REFUSED
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if any(address in network for network in self.networks):
            return Admission.TRUSTED
        return Admission.UNTRUSTED if self.admit_any else Admission.REFUSED

    @property
    def loopback_only(self) -> bool:
        """Whether only this host itself may signal (the development default)."""
        return not self.admit_any and all(n.is_loopback for n in self.networks)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


class TokenBucket:
    """`rate` events per second with bursts of `burst` (time passed in)."""

    __slots__ = ("rate", "burst", "_tokens", "_at")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._at = now

    def take(self, now: float) -> bool:
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class UntrustedRateLimit:
    """Messages from untrusted sources: `rate` per second per source, and ten times that for all
    of them together (spoofed UDP sources each get a bucket, but not the whole CPU). Trusted
    sources are never limited here: an SBC's burst of calls is what the recorder is for."""

    MAX_SOURCES = 10_000

    def __init__(self, rate: float) -> None:
        self._rate = rate
        self._sources: dict[str, TokenBucket] = {}
        self._all: TokenBucket | None = None

    def admits(self, host: str, now: float) -> bool:
        if self._all is None:
            self._all = TokenBucket(self._rate * 10, self._rate * 10, now)
        bucket = self._sources.get(host)
        if bucket is None:
            if len(self._sources) >= self.MAX_SOURCES:
                self._sources.clear()  # forget them all rather than grow without bound
            bucket = self._sources[host] = TokenBucket(self._rate, self._rate, now)
        return bucket.take(now) and self._all.take(now)
