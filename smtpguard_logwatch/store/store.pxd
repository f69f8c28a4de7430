# Types for the compiled twin of store.py (smtpguard_logwatch.store._c_store), which
# setup.py compiles with Cython 3 from the unchanged module and this file; the pure
# module stays the reference and never reads this.
#
# Why: the engine calls add, add_member and count for every event and every rule it
# asks. With a key's record and the store's clock as C fields, their hot paths compare
# and add C doubles and reach the record's fields directly, where the interpreter (and
# the twin compiled as plain Python) looks each one up by name. Every field stays
# readable and writable from Python (``public``), and the store keeps a __dict__ for
# the rest of its state, so persist.py, the tests and a subclass see the same object.
import cython

# (the twin's name for buckets.pxd: setup.py copies both beside their twins)
from ._c_buckets cimport Geometry, Series
# a key's record, typed in record.pxd: its fields are C fields here too
from ._c_record cimport KeyRec

cdef class _Bounds:
    cdef KeyRec rec
    cdef dict names, totals

    # the engine's gates ask this for every rule they consider
    @cython.locals(rec=KeyRec, d=object, s=object, totals=dict, total=object)
    cpdef double top(self, kind, metric) except? -1.0

cdef class FrequencyStore:
    cdef dict __dict__
    cdef public Geometry _geo
    cdef public dict _dims, _level_of
    cdef public double _w0, _cut0, _drop0
    # an object, not a double: the one float per minute that member sets share (a C
    # double would box a new float for every sighting they keep)
    cdef public object _clock_b
    cdef public tuple _cuts

    @cython.locals(rec=KeyRec, b=double, d=object, s=object, sb=double, sv=double,
                   h=object, hc=object)
    cpdef add(self, dimension, key, metric, double t, double n=*)

    @cython.locals(rec=KeyRec, d=object, ms=object, due=double)
    cpdef add_member(self, dimension, key, metric, member, double t)

    @cython.locals(rec=KeyRec, d=object, s=object, w=double, r=double,
                   geo=Geometry)
    cpdef count(self, dimension, key, metric, window, double now)

    # the hourly walk over every key: most cost one C comparison of ``due``
    @cython.locals(rec=KeyRec, clock=double, drop0=double, cut0=double, stay0=double,
                   stay_last=double, sb=double, due=double, t=double, gone=Py_ssize_t)
    cpdef expire(self, now)
