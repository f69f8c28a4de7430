# Types for the compiled twin of engine.py (smtpguard_logwatch.engine._c_engine), which
# setup.py compiles with Cython 3 from the unchanged module and this file; the pure
# module stays the reference and never reads this.
#
# Why: after the parsers and the store were compiled, the engine's own Python was about
# half of a replay with rules: for every event, ``consume`` filters the updates and
# ``_evaluate`` walks the candidate rules, and each step of those loops looked its
# variables and the engine's state up by name. Compiled as plain Python the twin saved
# 3 % of all instructions; with the engine's state as typed fields and the loops' locals
# typed, 9 %. Every field stays readable and writable from Python (``public``), and the
# engine keeps a __dict__ for the rest of its state, so the daemon, fleet mode, the
# tests and persist.py see the same object.
import cython

cdef class KeyViewOverStore:
    cdef public object store, dimension, key, authenticated
    cdef public double now
    cdef public dict _sums

    # every window a rule condition reads
    @cython.locals(sums=dict, value=object)
    cpdef count(self, metric, double window)

cdef class Engine:
    cdef dict __dict__
    cdef public object store, stats, _scoring_from, _next_housekeeping, watch_start
    cdef public dict _needed, _last_fired, _distinct_history, _candidate_cache
    cdef public dict _warm_cache, _caps, _rules_for, _allow_cache, _penalties
    cdef public set _enforced
    cdef public list _settle_times
    cdef public bint full_eval
    cdef public double _bucket, _next_store_expiry

    # once per event
    @cython.locals(now=double, needed=dict, touched=dict, prefixed=dict, wanted=object,
                   adds=list, members=list, periods=object, warm=bint,
                   authenticated=bint, n=object, before=object)
    cpdef consume(self, ev)

    # once per touched key
    @cython.locals(cache=dict, rules=object, found=list, settled=double)
    cpdef _candidates(self, dimension, list metrics, phase=*)

    @cython.locals(candidates=tuple, last_fired=dict, fired=list, last=object,
                   top=object, view=object, gate=object, points=double)
    cpdef _evaluate(self, dimension, key, list metrics, double now, bint authenticated,
                    phase=*)
