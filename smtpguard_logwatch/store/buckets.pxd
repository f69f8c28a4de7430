# Types for the compiled twin of buckets.py (smtpguard_logwatch.store._c_buckets), which
# setup.py compiles with Cython 3 from the unchanged module and this file; the pure
# module stays the reference and never reads this.
#
# Why: compiled as plain Python, the twin did the same attribute look-ups and float
# boxing as the interpreter (2 % fewer instructions in all). With a series' head as two
# C doubles and the level geometry as typed tuples, a window sum and the hot path of an
# add do their arithmetic in C. Everything stays readable and writable from Python as
# before (``public``); a series' ``b``/``v`` take any real number, as in the pure module.
import cython

cdef class Geometry:
    cdef public tuple res, w, span, keep, r0, ratio, nbuckets
    cdef public Py_ssize_t n
    cdef public dict level_cache

cdef class Series:
    cdef public double b, v
    cdef public object h, hv, hc, up, memo

@cython.locals(idx=object, val=object)
cpdef void _acc(tuple p, double c, double v) except *

@cython.locals(h=object, hv=object, hc=object, i=Py_ssize_t, x=Py_ssize_t)
cpdef void acc0(Series s, double c, double v) except *

@cython.locals(j=Py_ssize_t, c=double, r0=tuple)
cpdef void push(Series s, double b, double n, Geometry geo, tuple cuts) except *

@cython.locals(t=double, h=object, hc=object, up=object, x=Py_ssize_t)
cpdef double total(Series s) except? -1.0

@cython.locals(h=object, up=object, x=Py_ssize_t, idx=object)
cpdef bint _due(Series s, tuple cuts) except -1

@cython.locals(n=Py_ssize_t, last=double, k=Py_ssize_t, start=Py_ssize_t)
cpdef tuple _span(object idx, double a, double z)

@cython.locals(a=double, z=double, r=double, ar=double, total=double,
               last=double, n=Py_ssize_t, k=Py_ssize_t, start=Py_ssize_t, i=Py_ssize_t,
               j=Py_ssize_t, rj=double, h=object, hc=object, up=object, idx=object,
               val=object, ratio=tuple)
cpdef double window_sum(Series s, Geometry geo, Py_ssize_t lvl, double lo,
                        double hi) except? -1.0
