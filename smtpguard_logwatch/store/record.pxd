# Types for the compiled twin of record.py (smtpguard_logwatch.store._c_record), which
# setup.py compiles with Cython 3 from the unchanged module and this file; the pure
# module stays the reference and never reads this.
#
# Why: the store's hot paths (store.pxd) read and write a key's record for every event
# and the expiry walk compares every record's ``due``; as C fields, those are loads and
# stores, where the interpreter looks each one up by name. Every field stays readable
# and writable from Python (``public``).

cdef class KeyRec:
    cdef public Py_ssize_t hits, id
    cdef public double first, due, kept, hb, hv
    cdef public bint dirty
    cdef public object m, s, d
