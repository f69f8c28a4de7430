"""Fleet mode: hosts of one mail service share decisions through Redis.

:mod:`.wire` is what travels on the decision stream and the checks on what comes
back (the stream is a trust boundary); :mod:`.bus` is the Redis connection on its own
thread (the log loop never waits for it); :mod:`.link` is the daemon's side:
publishing this host's decisions and applying the others'. Without a ``[fleet]``
section none of this is imported and a host works alone, as before.
"""

from .link import Link

__all__ = ["Link"]
