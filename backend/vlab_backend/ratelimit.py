"""In-memory limits on login attempts, keyed on what a client cannot forge.

An attempt counts against its account (the e-mail alone, whichever address it comes from) and
against the peer address as uvicorn reports it: the socket's address, or the `X-Forwarded-For`
address only when the connection comes from a proxy named in `--forwarded-allow-ips`. An
attempt is counted before its password is checked, so a burst of concurrent guesses cannot all
slip under the limit; a successful one is taken back.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

# Attempts (failed, or still being checked) allowed per account within the window, and per
# address: more, as one address may serve many users (a NAT, a proxy that is not trusted).
ACCOUNT_ATTEMPTS = 5
ADDRESS_ATTEMPTS = 100
WINDOW_S = 300.0


class AttemptLimiter:
    """At most `max_attempts` counted attempts per key within `window_s`."""

    def __init__(self, max_attempts: int, window_s: float = WINDOW_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_attempts = max_attempts
        self.window_s = window_s
        self._clock = clock
        self._attempts: dict[str, deque[float]] = {}
        self._sweep_at = 1024  # key count above which expired keys are dropped
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        entries = self._attempts.get(key, deque())
        while entries and now - entries[0] > self.window_s:
            entries.popleft()
        return entries

    def wait_s(self, key: str) -> int:
        """Seconds until `key` may try again; 0 when it may try now."""
        now = self._clock()
        with self._lock:
            entries = self._recent(key, now)
            if len(entries) < self.max_attempts:
                return 0
            return max(1, int(self.window_s - (now - entries[0])) + 1)

    def count(self, key: str) -> None:
        now = self._clock()
        with self._lock:
            self._attempts.setdefault(key, deque()).append(now)
            if len(self._attempts) > self._sweep_at:
                # Keys that nobody retries would otherwise stay for good (a spray of e-mails).
                self._attempts = {k: v for k in list(self._attempts)
                                  if (v := self._recent(k, now))}
                self._sweep_at = max(1024, 2 * len(self._attempts))

    def take_back(self, key: str) -> None:
        """Forget the latest attempt of `key`."""
        with self._lock:
            entries = self._attempts.get(key)
            if entries:
                entries.pop()

    def clear(self, key: str) -> None:
        with self._lock:
            self._attempts.pop(key, None)

    def __len__(self) -> int:
        """How many keys are held."""
        return len(self._attempts)


class LoginThrottle:
    """Login attempts limited per account and per peer address."""

    def __init__(self, account_attempts: int = ACCOUNT_ATTEMPTS,
                 address_attempts: int = ADDRESS_ATTEMPTS, window_s: float = WINDOW_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.accounts = AttemptLimiter(account_attempts, window_s, clock)
        self.addresses = AttemptLimiter(address_attempts, window_s, clock)
        self._lock = threading.Lock()

    def attempt(self, email: str, address: str) -> int:
        """Count an attempt and answer 0, or answer how many seconds to wait (nothing counted)."""
        with self._lock:
            wait = max(self.accounts.wait_s(email), self.addresses.wait_s(address))
            if not wait:
                self.accounts.count(email)
                self.addresses.count(address)
            return wait

    def succeeded(self, email: str, address: str) -> None:
        """The account's slate is wiped; the address only gets this attempt back, so that
        logging in to an account of one's own does not reset a spray from that address."""
        self.accounts.clear(email)
        self.addresses.take_back(address)
