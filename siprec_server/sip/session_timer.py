"""RFC 4028 session timers: whether a requested session interval is acceptable (422 below our
Min-SE), what the 2xx to an INVITE or UPDATE grants (§9, Table 2), and one dialog's timer: a BYE
when the SRC stops refreshing, or UPDATE refreshes at half the interval when the SRC made us the
refresher (with the 422, 491 and 408/481 outcomes of §10 and RFC 3261 §14.1).

The timer is a machine with its own state table; it does not send anything itself. The agent
gives it two callbacks: one sends a refresh UPDATE on a client transaction, the other hangs the
dialog up when the session expired.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from functools import partial

from siprec_server.sip.message import SipRequest, SipResponse, ascii_digits, header_param
from siprec_server.sip.timers import TimerHandle, TimerQueue
from siprec_server.sip.transaction import ClientOutcome
from siprec_server.sip.transitions import StateTable

SendRefresh = Callable[[int, ClientOutcome, float], None]
"""Sends a refresh UPDATE asking for this interval; the outcome gets its final response."""


@dataclass(frozen=True, slots=True)
class Negotiated:
    """The outcome of an RFC 4028 negotiation for one 2xx."""

    interval: int
    refresher: str
    """"uac": the SRC refreshes and we BYE when it stops; "uas": we refresh with UPDATE."""
    require: bool
    """The SRC supports timers, so the 2xx carries Require: timer (RFC 4028 §9)."""

    def header(self) -> str:
        return f"{self.interval};refresher={self.refresher}"


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request's Session-Expires cannot be accepted, as the response that says so."""

    status: int
    reason: str | None = None
    headers: tuple[tuple[str, str], ...] = ()


def refusal(request: SipRequest, min_se: int) -> Refusal | None:
    """None when the request's Session-Expires (if any) is acceptable (RFC 4028 §9)."""
    value = request.headers.get("Session-Expires")
    if value is None:
        return None
    interval = delta_seconds(value)
    if interval is None:
        return Refusal(400, "Malformed Session-Expires")
    if interval < min_se:
        # Too short for us: 422 carrying our Min-SE.
        return Refusal(422, headers=(("Min-SE", str(min_se)),))
    return None


def negotiate(
    request: SipRequest, *, session_expires: int, min_se: int, dialog_allows_update: bool
) -> Negotiated | None:
    """RFC 4028 §9, Table 2, for the 2xx to an INVITE or UPDATE. `dialog_allows_update`: what
    the SRC's last Allow in the dialog said, for a request that carries none."""
    h = request.headers
    supports = "timer" in h.tokens("Supported") | h.tokens("Require")
    can_refresh = "update" in h.tokens("Allow") if h.get("Allow") else dialog_allows_update
    value = h.get("Session-Expires")
    if value is None:
        if not supports:
            return None
        # The SRC supports timers but proposes none: we may ask for one, it refreshes.
        their_min_se = delta_seconds(h.get("Min-SE") or "") or 0
        return Negotiated(max(session_expires, min_se, their_min_se), "uac", True)
    interval = delta_seconds(value) or session_expires
    requested = refresher_of(value)
    if supports:
        refresher = requested or "uac"
        if refresher == "uas" and not can_refresh:
            # We refresh with UPDATE only; without it we hand the job back to the SRC,
            # which obeys the refresher of the 2xx (RFC 4028 §7.2).
            refresher = "uac"
        return Negotiated(interval, refresher, True)
    # Session-Expires inserted by a proxy for a UAC without timers: the UAS refreshes
    # (Table 2). Without UPDATE we cannot, so we answer as a UAS without the extension.
    if can_refresh:
        return Negotiated(interval, "uas", False)
    return None


class SessionTimerState(Enum):
    OFF = "off"
    """No session timer: none negotiated, or a 2xx without Session-Expires turned it off."""
    WATCHING = "watching"
    """The SRC refreshes; without a refresh we BYE at interval - min(32, interval/3)."""
    REFRESH_DUE = "refresh-due"
    """We refresh: an UPDATE goes at half the interval (or after a 491 back-off)."""
    REFRESHING = "refreshing"
    """Our refresh UPDATE waits for its final response."""
    STOPPED = "stopped"
    """The dialog ended; nothing more happens."""


_S = SessionTimerState
SESSION_TIMER = StateTable(
    "session timer",
    {
        # A refresh by the SRC (re-INVITE or UPDATE answered 2xx) restarts the timer from any
        # live state, in whichever mode its 2xx granted.
        _S.OFF: {_S.OFF, _S.WATCHING, _S.REFRESH_DUE, _S.STOPPED},
        _S.WATCHING: {_S.OFF, _S.WATCHING, _S.REFRESH_DUE, _S.STOPPED},
        _S.REFRESH_DUE: {_S.OFF, _S.WATCHING, _S.REFRESH_DUE, _S.REFRESHING, _S.STOPPED},
        # REFRESHING -> REFRESHING: a 422 asked for a longer interval, we refresh again at once.
        _S.REFRESHING: {_S.OFF, _S.WATCHING, _S.REFRESH_DUE, _S.REFRESHING, _S.STOPPED},
        _S.STOPPED: set(),
    },
)


class SessionTimer:
    """One dialog's session timer (RFC 4028 §10)."""

    def __init__(
        self, timers: TimerQueue, send_refresh: SendRefresh, expire: Callable[[float], None]
    ) -> None:
        self._timers = timers
        self._send_refresh = send_refresh
        self._expire = expire
        self.state = SessionTimerState.OFF
        self.interval: int | None = None
        self.refresher = "uac"
        self.started = 0.0
        self._handle: TimerHandle | None = None

    def _move(self, new: SessionTimerState) -> None:
        self.state = SESSION_TIMER.check(self.state, new)

    def _schedule(self, deadline: float, callback: Callable[[float], None]) -> None:
        self._cancel()
        self._handle = self._timers.schedule(deadline, callback)

    def _cancel(self) -> None:
        if self._handle:
            self._handle.cancel()
            self._handle = None

    def start(self, negotiated: Negotiated | None, now: float) -> None:
        """What a 2xx we sent (or an answer to our refresh) granted; None turns the timer off
        (RFC 4028 §7.2/§9: a 2xx without Session-Expires)."""
        self._cancel()
        if self.state is SessionTimerState.STOPPED:
            return  # a dialog that ended keeps no timer
        if negotiated is None:
            self._move(SessionTimerState.OFF)
            self.interval = None
            return
        interval = negotiated.interval
        self.interval = interval
        self.refresher = negotiated.refresher
        self.started = now
        if negotiated.refresher == "uas":
            # RFC 4028 §10: the refresher refreshes at half the interval.
            self._move(SessionTimerState.REFRESH_DUE)
            self._schedule(now + interval / 2, self._refresh)
        else:
            self._watch_until(now + interval - min(32, interval / 3))

    def stop(self) -> None:
        """The dialog ended."""
        self._cancel()
        self._move(SessionTimerState.STOPPED)

    def _watch_until(self, deadline: float) -> None:
        # RFC 4028 §10: without a refresh, BYE at interval - min(32, interval/3).
        self._move(SessionTimerState.WATCHING)
        self._schedule(deadline, self._expire)

    def _refresh(self, now: float, attempt: int = 0) -> None:
        interval = self.interval
        if interval is None:
            return
        self._handle = None
        self._move(SessionTimerState.REFRESHING)
        self._send_refresh(interval, partial(self._answered, interval, attempt), now)

    def _answered(
        self, interval: int, attempt: int, status: int, response: SipResponse | None, now: float
    ) -> None:
        if self.state is not SessionTimerState.REFRESHING:
            return  # ended, turned off, or the SRC refreshed meanwhile
        if 200 <= status < 300 and response is not None:
            value = response.headers.get("Session-Expires")
            if value is None:
                self.start(None, now)
                return
            granted = delta_seconds(value) or interval
            refresher = refresher_of(value) or "uas"
            self.start(Negotiated(granted, refresher, True), now)
            return
        if status == 422 and response is not None and attempt < 2:
            min_se = delta_seconds(response.headers.get("Min-SE") or "")
            if min_se and min_se > interval:
                self.interval = min_se
                self._refresh(now, attempt + 1)
                return
        if status == 491 and attempt < 2:
            # RFC 3261 §14.1: glare; not the Call-ID owner, retry within 0 to 2 seconds.
            delay = secrets.randbelow(2001) / 1000
            self._move(SessionTimerState.REFRESH_DUE)
            self._schedule(now + delay, partial(self._retry, attempt + 1))
            return
        if status in (408, 481):
            # RFC 3261 §12.2.1.2: the dialog is gone at the SRC, or the SRC is.
            self._expire(now)
            return
        # Refused for another reason: the session lives until it expires unrefreshed.
        self._watch_until(max(now, self.started + interval - min(32, interval / 3)))

    def _retry(self, attempt: int, now: float) -> None:
        self._refresh(now, attempt)


def delta_seconds(value: str) -> int | None:
    return ascii_digits(value.split(";", 1)[0])


def refresher_of(session_expires: str) -> str | None:
    """The refresher parameter of a Session-Expires value, if it is "uac" or "uas"."""
    value = (header_param(session_expires, "refresher") or "").lower()
    return value if value in ("uac", "uas") else None
