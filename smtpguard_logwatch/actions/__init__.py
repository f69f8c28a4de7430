"""Enforcement: actions that make decisions real, applied and revoked from the ledger.

* :mod:`.base` — the Action interface (apply, revoke, reconcile) and the registry;
* :mod:`.keys` — validation of keys before they reach any map, set or rule.
"""
