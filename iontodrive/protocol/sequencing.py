"""Sequence-number rules shared by both ends (``docs/protocol.md`` §7).

* The host numbers requests 1..65535, wrapping to 1 (0 is reserved for unsolicited frames).
* A retry resends the *same* request with the *same* number. The device remembers its recent answers keyed
  by (sequence number, request), so a repeat takes effect at most once and gets the identical answer
  (S17). Keying on the request as well as the number means a host that reuses a number for a different
  request is not answered from the cache; that request's answer replaces the old one.
* The memory belongs to one host session (version 2, §7.3): the device empties it when a host opens its
  session with OpenSession, so a new host is never answered from another host's memory; and the safety
  commands (Stop, Abort, Pause) are never looked up in it. Both rules are the device's
  (``firmware_sim.device``); this class is the bounded memory itself.
"""

from __future__ import annotations

import itertools

from .constants import MAX_SEQ, MIN_REQUEST_SEQ
from .messages import Message


class SequenceCounter:
    """Hands out request sequence numbers 1..65535, wrapping to 1.

    Safe to share between threads without a lock: each number is one step of an :func:`itertools.count`,
    which the interpreter takes as a single operation (as it does a dict's ``get``/``pop``), so two threads
    never get the same number from one pass.
    """

    __slots__ = ("_steps",)

    def __init__(self, start: int = MIN_REQUEST_SEQ) -> None:
        if not MIN_REQUEST_SEQ <= start <= MAX_SEQ:
            raise ValueError(f"start = {start!r} is out of range: must be in [1, 65535]")
        self._steps = itertools.count(start - MIN_REQUEST_SEQ)

    def next(self) -> int:
        return next(self._steps) % MAX_SEQ + MIN_REQUEST_SEQ


class ReplyCache:
    """The device's memory of recent answers, for at-most-once execution of retried requests.

    One answer per sequence number (``docs/protocol.md`` §7.3): a request that reuses a remembered number
    with different content is a new request, and its answer replaces the remembered one. Bounded: holds
    the answers to the last ``capacity`` numbers (default 64), evicting the oldest.
    """

    __slots__ = ("_capacity", "_entries")

    def __init__(self, capacity: int = 64) -> None:
        if capacity < 1:
            raise ValueError(f"capacity = {capacity!r} is out of range: must be >= 1")
        self._capacity = capacity
        # seq -> (request, encoded answer), oldest first. Keyed on the number alone so that a lookup
        # hashes an int; the request is compared only when the number is remembered (a retry).
        self._entries: dict[int, tuple[Message, bytes]] = {}

    def lookup(self, seq: int, request: Message) -> bytes | None:
        """Return the encoded answer given earlier to this exact request with this number, or None."""
        entry = self._entries.get(seq)
        if entry is not None and entry[0] == request:
            return entry[1]
        return None

    def store(self, seq: int, request: Message, reply_frame: bytes) -> None:
        """Remember the encoded answer to ``request`` numbered ``seq`` (replacing any for ``seq``)."""
        entries = self._entries
        if entries.pop(seq, None) is None and len(entries) >= self._capacity:
            del entries[next(iter(entries))]
        entries[seq] = (request, reply_frame)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
