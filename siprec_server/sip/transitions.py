"""State tables for the machines of the SIP core (transactions, dialogs, session timers), after
h11's `_state.py`: each machine names its states in an Enum and lists the transitions it allows.
Asking for any other transition raises IllegalTransition. Input from the network never needs
one (the agent answers odd input before it reaches a machine), so the error always means a bug
in the core, and it surfaces instead of being fixed up silently.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import Enum
from typing import Generic, TypeVar

S = TypeVar("S", bound=Enum)


class IllegalTransition(RuntimeError):
    """A machine of the SIP core was asked for a transition its table does not allow."""


class StateTable(Generic[S]):
    """The allowed transitions of one machine: state -> the states it may move to."""

    def __init__(self, machine: str, allowed: Mapping[S, Iterable[S]]) -> None:
        self.machine = machine
        self._allowed = {state: frozenset(targets) for state, targets in allowed.items()}
        states = set(type(next(iter(self._allowed))))
        if set(self._allowed) != states:
            raise ValueError(f"{machine}: the table must list every state")

    @property
    def states(self) -> tuple[S, ...]:
        return tuple(self._allowed)

    def allows(self, current: S, new: S) -> bool:
        return new in self._allowed[current]

    def check(self, current: S, new: S) -> S:
        """`new` if the table allows `current -> new`; IllegalTransition otherwise."""
        if new not in self._allowed[current]:
            raise IllegalTransition(f"{self.machine}: {current.value} -> {new.value}")
        return new
