"""Time-bucketed frequency store: what each client IP, network, sender, SASL user and
recipient domain did over time, in bounded memory.

Modules, one job each:

* :mod:`.buckets` — resolutions and the multi-resolution buckets of one series
  (window semantics are documented there);
* :mod:`.distinct` — capped distinct-member counts per window;
* :mod:`.baseline` — a key's usual count for a window length (quantile of its history);
* :mod:`.evict` — which keys to forget when a dimension is full;
* :mod:`.record` — one key's record, and the int or bytes an idle key is frozen into;
* :mod:`.store` — :class:`FrequencyStore`, the keyed map tying them together;
* :mod:`.persist` — SQLite save/load inside the caller's transaction.
"""

from .buckets import DAY, DEFAULT_RESOLUTIONS, HOUR, MINUTE, SLACK, Resolution
from .store import FrequencyStore

__all__ = [
    "DAY",
    "DEFAULT_RESOLUTIONS",
    "HOUR",
    "MINUTE",
    "SLACK",
    "FrequencyStore",
    "Resolution",
]
