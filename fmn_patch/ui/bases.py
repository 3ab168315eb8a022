"""The base the page last loaded, kept for the next job: jobs run one at a time, and a full-size base takes minutes
to load. Every job leaves the base as it found it (the library removes what it applies)."""

from __future__ import annotations

import threading

from .. import Base, load_base


class LoadedBase:
    """At most one loaded base, by reference and device."""

    def __init__(self, device: str) -> None:
        self.device = device
        self._held: tuple[str, Base] | None = None
        self._lock = threading.Lock()

    def get(self, ref: str) -> Base:
        with self._lock:
            if self._held is None or self._held[0] != ref:
                self._held = None  # the old one goes before the new one loads
                self._held = (ref, load_base(ref, device=self.device))
            return self._held[1]
