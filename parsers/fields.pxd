# Types for the compiled twin of fields.py (smtpguard_logwatch.parsers._c_fields), which
# setup.py compiles with Cython 3 from the unchanged module and this file. The pure
# module stays the reference and never reads this; see postfix.pxd for why.
import cython

@cython.locals(cached=object, raw=str)
cpdef object normalize_ip(str text)

@cython.locals(i=Py_ssize_t, j=Py_ssize_t)
cpdef tuple split_client(str field)

cpdef object clean_address(object text)

@cython.locals(i=Py_ssize_t)
cpdef object domain_of(str address)
