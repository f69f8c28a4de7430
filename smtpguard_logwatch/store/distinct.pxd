# Types for the compiled twin of distinct.py (smtpguard_logwatch.store._c_distinct),
# which setup.py compiles with Cython 3 from the unchanged module and this file; the
# pure module stays the reference and never reads this.
#
# Why: the engine records a distinct member for most events (a network's client IPs,
# a recipient domain's senders …); with the set's fields in C, a sighting of a member
# already held is a dict look-up and a comparison of C doubles.
import cython

cdef class MemberSet:
    cdef public object _d, _one
    cdef public double tail
    cdef public bint ordered

    @cython.locals(d=dict, one=object, old=object)
    cpdef add(self, member, b, Py_ssize_t cap)
