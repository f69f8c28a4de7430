# cython: language_level=3, boundscheck=True, wraparound=False, initializedcheck=True
"""The compiled twin of the per-line work: envelope split and tag dispatch.

Why: the pipeline's loop runs once per log line; in Python the split alone costs
more than reading the file. This module does the same work with typed indexes
into the line, creating only the substrings a handler needs (none for the many
lines of programs no parser reads).

The pure-Python modules stay the reference: :func:`split_line` must return
exactly what :func:`smtpguard_logwatch.envelope.split_line` returns, and
:func:`feed` must do exactly what ``Pipeline.feed`` does (same events, same
statistics); tests/test_core_twins.py checks both on generated, sampled, corpus
and hostile lines. Only the two common stamp formats (RFC 3164 and RFC 3339) are
split here; every other line goes to the reference splitter, so rare formats
cannot drift apart.

Hostile lines: every index is checked against the line's length before it is
read (and Cython's bounds checking stays on), each scan moves forward only, so
the work is linear in the line's length; the MAX_LINE cap is applied as in the
reference.

Written for Cython 0.29 (Debian 12's cython3) and 3.x alike.
"""

from smtpguard_logwatch.envelope import split_line as _py_split_line


cdef inline Py_ssize_t _space(str s, Py_ssize_t start, Py_ssize_t end):
    """Index of the first ' ' in s[start:end], or -1."""
    cdef Py_ssize_t i = start
    while i < end:
        if s[i] == u' ':
            return i
        i += 1
    return -1


cdef inline bint _bsd_shape(str s, Py_ssize_t n):
    """``Nov  7 22:52:22 …``: the reference's ``line[15:16] == " "`` test and friends."""
    return n > 15 and s[15] == u' ' and s[9] == u':' and s[3] == u' '


cdef inline bint _iso_shape(str s, Py_ssize_t n):
    """``2024-03-05T05:40:51…``."""
    return n > 10 and s[4] == u'-' and s[10] == u'T'


cdef inline bint _bsd_spans(str s, Py_ssize_t n, Py_ssize_t *i1, Py_ssize_t *i2):
    """The two spaces after a RFC 3164 stamp that end host and tag, if the line has
    the shape the reference's fast path accepts (tag ends in ':', host not '<…')."""
    cdef Py_ssize_t a = _space(s, 16, n)
    cdef Py_ssize_t b
    if a < 0:
        return False
    b = _space(s, a + 1, n)
    if b < 0:
        return False
    if b - 1 <= a or s[b - 1] != u':':
        return False
    if a > 16 and s[16] == u'<':
        return False
    i1[0] = a
    i2[0] = b
    return True


cdef inline bint _iso_spans(str s, Py_ssize_t n, Py_ssize_t *i1, Py_ssize_t *i2,
                            Py_ssize_t *i3):
    """The three spaces after stamp, host and tag of an RFC 3339 line whose tag ends
    in ':' (the reference's ``line.split(" ", 3)`` path)."""
    cdef Py_ssize_t a = _space(s, 0, n)
    cdef Py_ssize_t b, c
    if a < 0:
        return False
    b = _space(s, a + 1, n)
    if b < 0:
        return False
    c = _space(s, b + 1, n)
    if c < 0:
        return False
    if c - 1 <= b or s[c - 1] != u':':
        return False
    i1[0] = a
    i2[0] = b
    i3[0] = c
    return True


cdef inline Py_ssize_t _logical_end(str s):
    """Length without one trailing newline (the reference strips exactly one)."""
    cdef Py_ssize_t n = len(s)
    if n > 0 and s[n - 1] == u'\n':
        return n - 1
    return n


def split_line(str line):
    """Same contract as ``envelope.split_line``: (stamp, host, tag, message) or None."""
    cdef Py_ssize_t n = _logical_end(line)
    cdef Py_ssize_t i1 = 0, i2 = 0, i3 = 0
    if _bsd_shape(line, n):
        if _bsd_spans(line, n, &i1, &i2):
            return (line[:15], line[16:i1], line[i1 + 1:i2 - 1], line[i2 + 1:n])
    elif _iso_shape(line, n):
        if _iso_spans(line, n, &i1, &i2, &i3):
            return (line[:i1], line[i1 + 1:i2], line[i2 + 1:i3 - 1], line[i3 + 1:n])
    return _py_split_line(line)


def feed(pipeline, lines, clock, progress, Py_ssize_t max_line, Py_ssize_t expire_every,
         Py_ssize_t batch):
    """``Pipeline.feed`` for one source, compiled: same counters, same calls, same order."""
    stats = pipeline.stats
    cdef list pending = pipeline._batch
    deliver = pipeline.deliver
    cdef dict tags = pipeline._tags
    resolve_tag = pipeline._resolve_tag
    resolve_time = clock.resolve
    cdef Py_ssize_t max_samples = pipeline.max_samples
    cdef Py_ssize_t read = 0, parsed = 0, skipped = 0, unparsed = 0, bad_time = 0, cut = 0
    cdef Py_ssize_t mask = expire_every - 1
    cdef Py_ssize_t n, i1 = 0, i2 = 0, i3 = 0
    cdef str s
    cdef str stamp, host, tag, msg
    cdef bint fast
    cdef object t = None
    cdef object first = stats.first_time
    cdef object entry, handler, now, parts
    # The stamp and time of the last line resolved: lines of the same second repeat it,
    # and resolving it again would make the same Clock cache hit (a hit has no side
    # effect), so its time is reused without building the stamp or calling the clock.
    cdef str last_stamp = None
    cdef object last_now = None
    try:
        for line in lines:
            read += 1
            if not (read & mask):
                if t is not None:
                    pipeline.expire(t)
                if progress is not None:
                    stats.read += read
                    read = 0
                    progress(stats)
            s = line
            if len(s) > max_line and len(s.rstrip(u"\n")) > max_line:
                s = s[:max_line]  # one documented cap for every mode
                cut += 1
            n = _logical_end(s)
            fast = False
            if _bsd_shape(s, n):
                if _bsd_spans(s, n, &i1, &i2):
                    fast = True
                    tag = s[i1 + 1:i2 - 1]
                    i3 = i2
                    i2 = i1
                    i1 = 15
            elif _iso_shape(s, n):
                if _iso_spans(s, n, &i1, &i2, &i3):
                    fast = True
                    tag = s[i2 + 1:i3 - 1]
            if fast:
                # stamp is s[:i1], host s[i1+1:i2], message s[i3+1:n]: made only
                # when a parser wants the line.
                entry = tags.get(tag)
                if entry is None:
                    entry = resolve_tag(tag)
                handler = entry[0]
                if handler is None:
                    skipped += 1
                    continue
                if last_stamp is not None and i1 == len(last_stamp) and \
                        s.startswith(last_stamp):
                    stamp = last_stamp
                else:
                    stamp = s[:i1]
                host = s[i1 + 1:i2]
                msg = s[i3 + 1:n]
            else:
                parts = _py_split_line(s)
                if parts is None:
                    skipped += 1
                    continue
                stamp, host, tag, msg = parts
                entry = tags.get(tag)
                if entry is None:
                    entry = resolve_tag(tag)
                handler = entry[0]
                if handler is None:
                    skipped += 1
                    continue
            if last_stamp is not None and stamp == last_stamp:
                now = last_now
            else:
                now = resolve_time(stamp)
                if now is None:
                    bad_time += 1
                    continue
                last_stamp = stamp
                last_now = now
            t = now
            if first is None:
                first = now
            if handler(now, host, entry[1], entry[2], msg):
                parsed += 1
            else:
                unparsed += 1
                if len(stats.unparsed_samples) < max_samples:
                    stats.unparsed_samples.append(s.rstrip(u"\n")[:500])
            if len(pending) >= batch:
                deliver()
        deliver()
    finally:
        stats.read += read
        stats.parsed += parsed
        stats.skipped += skipped
        stats.unparsed += unparsed
        stats.bad_time += bad_time
        stats.cut += cut
        stats.first_time = first
        if t is not None and (stats.last_time is None or t > stats.last_time):
            stats.last_time = t  # files may overlap: the span ends at the latest line
