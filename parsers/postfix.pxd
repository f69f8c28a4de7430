# Types for the compiled twin of postfix.py (smtpguard_logwatch.parsers._c_postfix),
# which setup.py compiles with Cython 3 from the unchanged module and this file; the
# pure module stays the reference and never reads this.
#
# Why: compiled as plain Python, every str method call (find, startswith with a
# position, slicing) went through Python's generic call and argument parsing, and every
# call between the handlers through a Python call. With the handlers' text typed as
# str and their indexes as C integers, Cython calls the str functions directly and the
# handlers call each other in C: 18 % fewer instructions per line of the bench log
# (bench/bench_instructions.py --only parse). An argument typed str takes a str or None:
# another type is a TypeError, and None fails where the pure module fails on it, with a
# Python exception (tests/test_core_twins.py). The pipeline only ever passes str.
import cython

cdef class PostfixParser:
    cdef dict __dict__  # the tables stay plain attributes (the pipeline walks vars())

    @cython.locals(c=str, i=Py_ssize_t, head=str, rest=str)
    cpdef _smtpd(self, object t, str host, str program, object pid, str msg)

    @cython.locals(c=Py_ssize_t, i=Py_ssize_t, orig_at=Py_ssize_t, end=Py_ssize_t,
                   s=Py_ssize_t, client_text=bint)
    cpdef _client(self, object t, str host, object pid, str qid, str rest)

    @cython.locals(rest=str, j=Py_ssize_t, counters=list)
    cpdef _disconnect(self, object t, str host, object pid, str msg)

    @cython.locals(action=str, sep=str, body=str)
    cpdef _reject_line(self, object t, str host, object pid, object qid, str rest)

    @cython.locals(reply=str, text=str, stage=str)
    cpdef _emit_reject(self, object t, str host, object pid, object qid, str body,
                       str action)

    @cython.locals(k=Py_ssize_t, tail=str, u=Py_ssize_t, client=str, detail=str,
                   addr=str)
    cpdef _smtpd_warning(self, object t, str host, object pid, str rest)

    @cython.locals(prefix=str, after=str, client=str)
    cpdef _smtpd_other(self, object t, str host, str msg)

    @cython.locals(word=str, body=str, prefix=str, k=Py_ssize_t, a=Py_ssize_t)
    cpdef _postscreen(self, object t, str host, str program, object pid, str msg)

    @cython.locals(qid=str, sep=str, rest=str, end=Py_ssize_t, field=str)
    cpdef _qmgr(self, object t, str host, str program, object pid, str msg)

    @cython.locals(qid=str, sep=str, rest=str, action=str, sep2=str, body=str)
    cpdef _cleanup(self, object t, str host, str program, object pid, str msg)

    @cython.locals(qid=str, sep=str, rest=str, r=Py_ssize_t, d=Py_ssize_t, s=Py_ssize_t,
                   k=Py_ssize_t, recipient=str, status_word=str, seen=set, first=bint)
    cpdef _delivery(self, object t, str host, str program, object pid, str msg)

@cython.locals(c=str)
cpdef Py_ssize_t _field(str s, Py_ssize_t i, str name)

@cython.locals(limit=Py_ssize_t, e=Py_ssize_t)
cpdef Py_ssize_t _addr_end(str s, Py_ssize_t k)

@cython.locals(i=Py_ssize_t, e=Py_ssize_t, k=Py_ssize_t, end=Py_ssize_t, stop=Py_ssize_t)
cpdef object _parse_tail(str s, Py_ssize_t c, bint cleanup)

@cython.locals(k=Py_ssize_t)
cpdef str _classify_words(str text, object end=*)

@cython.locals(i=Py_ssize_t, sp=Py_ssize_t)
cpdef Py_ssize_t _words_start(str reply)

@cython.locals(at=Py_ssize_t, end=Py_ssize_t, o=Py_ssize_t, q=Py_ssize_t)
cpdef tuple _xforward_tail(str rest, Py_ssize_t start)
