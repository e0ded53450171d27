"""The IANA time zones this process knows: one list for every option that takes a zone (an
export's ``time_zone``, a schedule's), so both accept and document the same names."""

from __future__ import annotations

import functools
from zoneinfo import available_timezones


@functools.cache
def _known_zones() -> frozenset[str]:
    return frozenset(available_timezones())


def time_zone_names() -> list[str]:
    """Every IANA time zone this process knows, sorted."""
    return sorted(_known_zones())


def is_time_zone(name: str) -> bool:
    """Whether ``name`` is an IANA time zone this process knows (``Europe/Berlin``, ``UTC``)."""
    return name in _known_zones()
