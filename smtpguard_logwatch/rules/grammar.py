"""The rule language's grammar (pyparsing), producing the syntax tree in ``syntax``.

Reference (layout is free: newlines and indentation are for the reader; ``#`` comments)::

    include [optional] "FILE"          relative to this file; globs allowed; cycles are errors
    const NAME = NUMBER | DURATION     durations: 30s 10m 2h 1d 1w 1h30m; numbers: 200 0.8 80%
    list NAME = [ITEM, ITEM …]         networks, user@dom, @dom, @.dom (and subdomains),
    list NAME += ITEM, …               dom.example, names, "quoted", other lists by name
    allow network|sender|sender_domain|sasl_user|recipient_domain ITEM, …
    decay half-life DURATION [for DIMENSION]
    rule NAME for DIMENSION:
        when CONDITION                 exactly one
        unless CONDITION | where CONDITION    any number (key tests become the key filter)
        baseline [min history DURATION] [floor NUMBER]
        add N [temporary] points [for DURATION] [up to ACTION] [every DURATION]
    ladder DIMENSION:
        at N points ACTION [ARG] [for DURATION]
        repeat offender [within DURATION] ACTION for DURATION [, doubling | growing xN]
            [up to DURATION]
        extend DURATION on activity
        enforce only where CONDITION   otherwise enforcing steps only notify
        mode simulate                  decide and notify, enforce nothing (see simulation)

    CONDITION: comparisons (> >= < <= == !=) of arithmetic (+ - * / x, parentheses) over
    ``METRIC in WINDOW``, ``distinct METRIC in WINDOW``, ``usual [METRIC in WINDOW]``,
    numbers and consts; ``KEY [not] in LIST|ITEM|[ITEM, …]``; ``authenticated``;
    combined with not / and / or and parentheses.

The grammar is deliberately lenient about names (any word can stand where a metric,
dimension or action is expected) so that the compiler can say "unknown metric 'mesages'
(did you mean 'messages'?)" with the right column instead of a generic parse failure.
Once a keyword has committed to a construct (``rule``, ``when``, ``and``, ``>``…) the
``-`` operator stops backtracking, so syntax errors point at the token that is wrong.
"""

from __future__ import annotations

import difflib
import functools
import math
import re

import pyparsing as pp

from ..limits import RULE_DURATION, RULE_NUMBER, Range
from . import syntax as S
from .errors import RuleError, Source

STATEMENT_WORDS = ("include", "const", "list", "allow", "decay", "rule", "ladder")
CLAUSE_WORDS = ("when", "unless", "where", "add", "baseline", "at", "repeat", "extend",
                "enforce", "mode")
RESERVED = frozenset(STATEMENT_WORDS + CLAUSE_WORDS + (
    "optional", "for", "temporary", "points", "point", "every", "min", "history", "floor",
    "and", "or", "not", "in", "usual", "distinct", "x", "authenticated", "offender",
    "within", "doubling", "growing", "up", "to", "on", "activity", "by", "only",
))

_NUMBER_RE = re.compile(r"\d+(?:\.\d+)?")
_PERCENT_RE = re.compile(r"(\d+(?:\.\d+)?)%")
_DURATION_RE = re.compile(r"(?:\d+(?:\.\d+)?[smhdw])+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def classify_number(loc: int, text: str) -> S.Num:
    """Turn a number-like token into a Num: plain, percent, duration or bad (which
    includes a number outside its range in limits.py; see :func:`out_of_range`)."""
    if _NUMBER_RE.fullmatch(text):
        value = float(text)
        return S.Num(loc, text, "number" if _in(value, RULE_NUMBER) else "bad", value)
    m = _PERCENT_RE.fullmatch(text)
    if m:
        value = float(m.group(1))
        return S.Num(loc, text, "percent" if _in(value, RULE_NUMBER) else "bad", value / 100)
    if _DURATION_RE.fullmatch(text):
        seconds = sum(float(n) * _UNITS[u] for n, u in _DURATION_PART.findall(text))
        return S.Num(loc, text, "duration" if _in(seconds, RULE_DURATION) else "bad", seconds)
    return S.Num(loc, text, "bad", 0.0)


def _in(value: float, limit: Range) -> bool:
    return math.isfinite(value) and limit.low <= value <= limit.high


def out_of_range(num: S.Num) -> str | None:
    """Why a well-formed number token is refused (None: it is not out of range)."""
    if _DURATION_RE.fullmatch(num.text):
        limit = RULE_DURATION
    elif _NUMBER_RE.fullmatch(num.text) or _PERCENT_RE.fullmatch(num.text):
        limit = RULE_NUMBER
    else:
        return None
    shown = num.text if len(num.text) <= 24 else f"{num.text[:12]}…({len(num.text)} characters)"
    return f"'{shown}' is out of range: {limit.describe()} ({limit.why})"


class _Op:
    """An operator token with its position (so errors can point at it)."""

    __slots__ = ("loc", "op")

    def __init__(self, loc: int, op: str) -> None:
        self.loc = loc
        self.op = op


class _Mark:
    """A keyword whose position matters to the compiler (``temporary``, ``for``)."""

    __slots__ = ("loc", "word")

    def __init__(self, loc: int, word: str) -> None:
        self.loc = loc
        self.word = word


class _Items:
    """Wraps a tuple of list items so pyparsing keeps it as one token."""

    __slots__ = ("items",)

    def __init__(self, items: tuple[S.Item, ...]) -> None:
        self.items = items


def _g(t: pp.ParseResults, name: str, default: object = None) -> object:
    """The token named ``name``, unwrapped from pyparsing's result containers."""
    if name not in t:
        return default
    value = t[name]
    while isinstance(value, pp.ParseResults) and len(value) == 1:
        value = value[0]
    if isinstance(value, _Items):
        return value.items
    return value


_BLANK = re.compile(r"(?:\s+|#[^\n]*)*")


def _skip_blank(text: str, loc: int) -> int:
    """Offset of the next token at or after ``loc`` (skips whitespace and comments)."""
    m = _BLANK.match(text, loc)
    return m.end() if m else loc


class _Named(pp.ParseElementEnhance):
    """Reports "expected NAME" when ``expr`` fails at its first token, instead of the
    message of whatever sub-element failed deepest inside it (a bare regex)."""

    def __init__(self, expr: pp.ParserElement, name: str) -> None:
        super().__init__(expr)
        self.set_name(name)

    def parseImpl(self, instring: str, loc: int, do_actions: bool = True):
        try:
            return self.expr._parse(instring, loc, do_actions, callPreParse=False)
        except pp.ParseFatalException:
            raise
        except pp.ParseException as exc:
            start = _skip_blank(instring, loc)
            if exc.loc <= start:
                raise pp.ParseException(instring, start, self.errmsg, self) from None
            raise


class _FirstOf(pp.MatchFirst):
    """The first alternative that matches, reporting the deepest failure's own message
    (pyparsing >= 3.1 does this; 3.0.9, Debian 12's, replaces it with the list of the
    alternatives, "expected {Located:(…) | a condition}"), so an error reads the same on
    every supported pyparsing."""

    def parseImpl(self, instring: str, loc: int, do_actions: bool = True):
        deepest: pp.ParseException | None = None
        for expr in self.exprs:
            try:
                return expr._parse(instring, loc, do_actions)
            except pp.ParseFatalException:
                raise
            except pp.ParseException as exc:
                if deepest is None or exc.loc > deepest.loc:
                    deepest = exc
        if deepest is None:
            raise pp.ParseException(instring, loc, self.errmsg, self)
        if deepest.loc == loc:  # every alternative failed at once: name them all
            deepest.msg = self.errmsg
        raise deepest


def node_end(node: object) -> int:
    """End offset of an expression node (Num/Name have no stored end)."""
    if isinstance(node, S.Num):
        return node.loc + len(node.text)
    if isinstance(node, S.Name):
        return node.loc + len(node.name)
    return node.end  # type: ignore[attr-defined]


def _kw(word: str) -> pp.Keyword:
    return pp.Keyword(word).set_name(repr(word))


def _mark(word: str) -> pp.ParserElement:
    return _kw(word).set_parse_action(lambda s, loc, t: _Mark(loc, word))


def _located(expr: pp.ParserElement, build) -> pp.ParserElement:
    """Wrap ``expr`` so ``build(start, end, inner_tokens)`` makes the node."""
    def action(s: str, loc: int, t: pp.ParseResults) -> object:
        if len(t) == 1:  # a results name on the Located wraps its tokens once more
            t = t[0]
        return build(_skip_blank(s, t[0]), t[2], t[1])
    return pp.Located(expr).set_parse_action(action)


def _fold(cls):
    """Left-fold ``a op b op c`` into binary nodes."""
    def action(s, loc, t):
        toks = list(t)
        node = toks[0]
        for i in range(1, len(toks), 2):
            op, right = toks[i], toks[i + 1]
            node = cls(node.loc, node_end(right), "*" if op.op == "x" else op.op, op.loc,
                       node, right)
        return node
    return action


def _boolop(word: str):
    def action(s, loc, t):
        items = tuple(x for x in t if not isinstance(x, str))
        if len(items) == 1:
            return items[0]
        return S.BoolOp(items[0].loc, node_end(items[-1]), word, items)
    return action


def _unexpected(s: str, loc: int, t: pp.ParseResults) -> None:
    word = t[0]
    close = difflib.get_close_matches(
        word, STATEMENT_WORDS + CLAUSE_WORDS + ("and", "or", "not"), n=1, cutoff=0.7)
    if close:
        raise pp.ParseFatalException(s, loc, f"unexpected {word!r} (did you mean {close[0]!r}?)")
    raise pp.ParseFatalException(
        s, loc, f"unexpected {word!r}: expected a statement ({', '.join(STATEMENT_WORDS)}) "
        "or a clause of the rule or ladder above")


@functools.cache
def file_grammar() -> pp.ParserElement:
    """The grammar of one rule file (built once; pyparsing elements are reusable)."""
    reserved = pp.MatchFirst([pp.Keyword(w) for w in sorted(RESERVED, key=len, reverse=True)])
    ident = pp.Regex(r"[A-Za-z_][A-Za-z0-9_]*")
    name_any = ident.copy().set_parse_action(lambda s, loc, t: S.Name(_skip_blank(s, loc), t[0]))
    name_any = _Named(name_any, "a name")
    # (the action sits on the regex: an And's loc would include the whitespace before)
    name = _Named(~reserved + ident.copy().set_parse_action(lambda s, loc, t: S.Name(
            _skip_blank(s, loc), t[0])),
                  "a name")

    number = pp.Regex(r"\d+(?:\.\d+)*(?:[A-Za-wyz%][A-Za-z0-9_%]*)?")
    number.set_parse_action(lambda s, loc, t: classify_number(loc, t[0]))
    number.set_name("a number")
    value = _Named(_FirstOf([number, name]), "a number or duration")

    # ---- list items
    def item(kind: str, expr: pp.ParserElement) -> pp.ParserElement:
        return expr.set_parse_action(lambda s, loc, t: S.Item(_skip_blank(s, loc), t[0], kind))

    quoted = pp.QuotedString('"', esc_char="\\") | pp.QuotedString("'", esc_char="\\")
    list_item = _Named(
        item("string", quoted.copy())
        | item("address", pp.Regex(
            r"[A-Za-z0-9.!#$%&*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"))
        | item("network", pp.Regex(
            r"(?:[0-9A-Fa-f]*:[0-9A-Fa-f:.]*|\d+(?:\.\d+)+)(?:/\d+)?(?![\w.@-])"))
        | item("atdomain", pp.Regex(r"@\.?[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"))
        | item("dotted", pp.Regex(r"\.?[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)+"))
        | ~reserved + item("word", ident.copy()),
        "a list item (network, address, @domain, name or list name)")
    items = pp.Group(list_item + pp.ZeroOrMore(pp.Suppress(",") - list_item))
    items.set_parse_action(lambda s, loc, t: _Items(tuple(t[0])))

    # ---- arithmetic
    arith = pp.Forward().set_name("a number or metric")
    metric_body = (
        name("metric") + pp.Opt(pp.Suppress("(") - name("qual") - pp.Suppress(")"))
        + _kw("in") - value("window").set_name("a window (like 10m)")
    )
    metric = _located(
        (_kw("distinct")("distinct") - metric_body) | metric_body,
        lambda a, b, t: S.Metric(a, b, "distinct" in t, _g(t, "metric"), _g(t, "qual"),
                                 _g(t, "window")),
    ).set_name("a metric")
    usual = _located(_kw("usual") + pp.Opt(metric("metric")),
                     lambda a, b, t: S.Usual(a, b, _g(t, "metric")))
    paren_arith = _located(pp.Suppress("(") + arith - pp.Suppress(")"),
                           lambda a, b, t: S.Paren(a, b, t[0]))
    factor = _Named(_FirstOf([number, usual, metric, paren_arith, name]), "a number or metric")
    mulop = pp.Regex(r"\*|/|x(?![A-Za-z0-9_])").set_parse_action(
        lambda s, loc, t: _Op(loc, t[0])).set_name("an operator")
    addop = pp.Regex(r"[+-]").set_parse_action(lambda s, loc, t: _Op(loc, t[0]))
    term = (factor + pp.ZeroOrMore(mulop - factor)).set_parse_action(_fold(S.BinOp))
    arith <<= (term + pp.ZeroOrMore(addop - term)).set_parse_action(_fold(S.BinOp))

    # ---- conditions
    cond = pp.Forward().set_name("a condition")
    cmp_op = pp.Regex(r">=|<=|==|!=|>|<|=").set_parse_action(
        lambda s, loc, t: _Op(loc, "==" if t[0] == "=" else t[0]))
    cmp_op.set_name("a comparison (>, >=, <, <=, ==, !=)")
    comparison = _located(
        arith + cmp_op - arith,
        lambda a, b, t: S.Compare(a, b, t[1].op, t[1].loc, t[0], t[2]))
    dim_word = pp.MatchFirst([pp.Keyword(d) for d in (
        "client_ip", "client_net", "sender_domain", "sender", "sasl_user",
        "recipient_domain")]).set_parse_action(lambda s, loc, t: S.Name(_skip_blank(s, loc), t[0]))
    bracketed = pp.Suppress("[") - items - pp.Suppress("]")
    key_pred = _located(
        dim_word("subject") + pp.Opt(_kw("not"))("negated") + _kw("in")
        + (bracketed("bracket") | list_item("one")),
        lambda a, b, t: S.KeyPred(
            a, b, _g(t, "subject"), "negated" in t and bool(_g(t, "negated")),
            tuple(_g(t, "bracket")) if "bracket" in t else (_g(t, "one"),), "bracket" in t),
    )
    authenticated = _located(_kw("authenticated"), lambda a, b, t: S.Authenticated(a, b))
    paren_cond = _located(pp.Suppress("(") + cond - pp.Suppress(")"),
                          lambda a, b, t: S.Paren(a, b, t[0]))
    atom = _Named(_FirstOf([paren_cond, key_pred, authenticated, comparison]), "a condition")
    not_expr = pp.Forward()
    not_expr <<= _Named(_FirstOf([
        _located(_kw("not") - not_expr, lambda a, b, t: S.Not(a, b, t[1])), atom]), "a condition")
    and_expr = (not_expr + pp.ZeroOrMore(_kw("and") - not_expr)).set_parse_action(
        _boolop("and"))
    cond <<= (and_expr + pp.ZeroOrMore(_kw("or") - and_expr)).set_parse_action(_boolop("or"))

    # ---- statements
    points_kw = _Named(_kw("points") | _kw("point"), "'points'")
    path = quoted.copy().set_parse_action(lambda s, loc, t: S.Item(
            _skip_blank(s, loc), t[0], "string"))
    path.set_name("a quoted file name")
    include = (_kw("include") - pp.Opt(_kw("optional"))("optional") - path("path")
               ).set_parse_action(lambda s, loc, t: S.Include(
                       _skip_blank(s, loc), _g(t, "path").text, _g(t, "path").loc, "optional" in t))
    const = (_kw("const") - name_any("name") - pp.Suppress("=") - value("value")
             ).set_parse_action(lambda s, loc, t: S.ConstDef(
                     _skip_blank(s, loc), _g(t, "name"), _g(t, "value")))
    # "list NAME =" with nothing after it is an empty list that local files extend
    list_def = (_kw("list") - name_any("name") - (pp.Literal("+=") | pp.Literal("="))("op")
                - pp.Opt(items("items"))).set_parse_action(
        lambda s, loc, t: S.ListDef(
                _skip_blank(s, loc), _g(t, "name"), _g(t, "op") == "+=", _g(t, "items", ())))
    allow = (_kw("allow") - name_any("kind") - items("items")).set_parse_action(
        lambda s, loc, t: S.Allow(_skip_blank(s, loc), _g(t, "kind"), _g(t, "items")))
    half_life = pp.Regex(r"half[-_]?life(?![\w-])").set_name("'half-life'")
    decay = (_kw("decay") - half_life - value("value") - pp.Opt(_kw("for") - name_any("dim"))
             ).set_parse_action(lambda s, loc, t: S.Decay(
                     _skip_blank(s, loc), _g(t, "value"), _g(t, "dim")))

    when = ((_kw("when") | _kw("unless") | _kw("where"))("kw") - cond("expr")
            ).set_parse_action(lambda s, loc, t: S.When(
                    _skip_blank(s, loc), _g(t, "kw"), _g(t, "expr")))
    add = (
        _kw("add") - value("points") - pp.Opt(_mark("temporary"))("temp")
        - points_kw
        - pp.Opt(_mark("for")("for_kw") - value("for"))
        - pp.Opt(_kw("up") - _kw("to") - name_any("cap"))
        - pp.Opt(_kw("every") - value("every"))
    ).set_parse_action(lambda s, loc, t: S.Add(_skip_blank(s, loc), _g(t, "points"),
        _g(t, "temp").loc if "temp" in t else None, _g(t, "for"),
        _g(t, "for_kw").loc if "for_kw" in t else None, _g(t, "every"), _g(t, "cap")))
    baseline = (
        _kw("baseline") - pp.OneOrMore(
            (_kw("min") - _kw("history") - value("min_history"))
            | (_kw("floor") - value("floor")) | pp.Suppress(","))
    ).set_parse_action(lambda s, loc, t: S.BaselineClause(
            _skip_blank(s, loc), _g(t, "min_history"), _g(t, "floor")))
    clause = _Named(_FirstOf([when, add, baseline]), "a rule clause (when, unless, where, add)")

    def build_rule(a: int, b: int, t: pp.ParseResults) -> S.RuleDef:
        return S.RuleDef(a, b, _g(t, "name"), _g(t, "dim"), tuple(t["clauses"]))

    rule = _located(
        _kw("rule") - name_any("name") - _kw("for") - name_any("dim") - pp.Suppress(":")
        - pp.Group(pp.OneOrMore(clause))("clauses"),
        build_rule,
    )

    rate = (value("count") + pp.Suppress("/") - name_any("unit")).set_parse_action(
        lambda s, loc, t: S.Rate(_skip_blank(s, loc), _g(t, "count"), _g(t, "unit")))
    action = (
        _Named(name, "an action (notify, delay, throttle, defer, hold, refuse)")("word")
        + pp.Opt(rate | value)("arg") + pp.Opt(_kw("for") - value("dur"))
    ).set_parse_action(lambda s, loc, t: S.Action(
            _skip_blank(s, loc), _g(t, "word"), _g(t, "arg") if "arg" in t else None, _g(t, "dur")))
    step = (_kw("at") - value("points") - points_kw - action("action")
            ).set_parse_action(lambda s, loc, t: S.Step(
                    _skip_blank(s, loc), _g(t, "points"), _g(t, "action")))
    growth_factor = pp.Regex(r"[x*]\s*(\d+(?:\.\d+)?)").set_parse_action(
        lambda s, loc, t: S.Num(
                _skip_blank(s, loc), t[0], "number", float(re.sub(r"^[x*]\s*", "", t[0]))))
    growth_factor.set_name("a factor like x2")
    growth = (
        _kw("doubling").set_parse_action(lambda s, loc, t: S.Num(
                _skip_blank(s, loc), "doubling", "number", 2))
        | (_kw("growing") - growth_factor).set_parse_action(lambda s, loc, t: t[1])
    )
    repeat = (
        _kw("repeat") - _kw("offender") - pp.Opt(_kw("within") - value("within"))
        - pp.Opt(pp.Suppress(":")) - action("action") - pp.Opt(pp.Suppress(","))
        - pp.Opt(growth("growth")) - pp.Opt(pp.Suppress(","))
        - pp.Opt(_kw("up") - _kw("to") - value("up_to"))
    ).set_parse_action(lambda s, loc, t: S.Repeat(
            _skip_blank(s, loc), _g(t, "within"), _g(t, "action"),
        _g(t, "growth") if "growth" in t else None, _g(t, "up_to")))
    extend = (_kw("extend") - pp.Opt(_kw("by")) - value("dur") - _kw("on") - _kw("activity")
              ).set_parse_action(lambda s, loc, t: S.Extend(_skip_blank(s, loc), _g(t, "dur")))
    enforce_only = (_kw("enforce") - _kw("only") - _kw("where") - cond("expr")
                    ).set_parse_action(lambda s, loc, t: S.EnforceOnly(
                        _skip_blank(s, loc), _g(t, "expr")))
    mode = (_kw("mode") - _Named(name_any, "a mode (simulate)")("word")
            ).set_parse_action(lambda s, loc, t: S.Mode(_skip_blank(s, loc), _g(t, "word")))
    ladder = (
        _kw("ladder") - name_any("dim") - pp.Suppress(":")
        - pp.Group(pp.OneOrMore(_Named(
            step | repeat | extend | enforce_only | mode,
            "a ladder clause (at, repeat offender, extend, enforce only where, mode)"
        )))("clauses")
    ).set_parse_action(lambda s, loc, t: S.LadderDef(
            _skip_blank(s, loc), _g(t, "dim"), tuple(t["clauses"])))

    statement = include | const | list_def | allow | decay | rule | ladder
    unexpected = pp.Regex(r"\S+").set_parse_action(_unexpected)
    grammar = pp.ZeroOrMore(statement | unexpected) + pp.StringEnd()
    grammar.ignore(pp.python_style_comment)
    grammar.parse_with_tabs()
    return grammar


def _found(text: str, loc: int) -> str:
    loc = _skip_blank(text, loc)
    if loc >= len(text):
        return "end of file"
    tok = re.compile(r"[A-Za-z0-9_.:@/%]+|\S").match(text, loc)
    return repr(tok.group(0) if tok else text[loc])


def _did_you_mean(found: str) -> str:
    word = found.strip("'")
    if not re.fullmatch(r"[a-z_]+", word) or word in RESERVED:
        return ""
    close = difflib.get_close_matches(word, sorted(RESERVED), n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


def parse(source: Source) -> list[S.Statement]:
    """Parse one file's text into statements, or raise RuleError at the bad token."""
    try:
        result = file_grammar().parse_string(source.text, parse_all=True)
    except pp.ParseBaseException as exc:
        loc = exc.loc
        # Point at the token, not at the whitespace or comment before it.
        skip = re.compile(r"(?:\s+|#[^\n]*)*")
        m = skip.match(source.text, loc)
        if m:
            loc = m.end()
        if loc >= len(source.text):  # point just after the last token, not past the end
            loc = len(re.sub(r"(?:\s+|#[^\n]*)*\Z", "", source.text))
        msg = exc.msg
        if isinstance(exc, pp.ParseFatalException) and msg.startswith("unexpected"):
            raise RuleError.at(source, loc, msg) from None
        if msg.startswith("Expected "):
            msg = "expected " + msg[len("Expected "):]
        found = _found(source.text, loc)
        raise RuleError.at(source, loc, f"{msg}, found {found}{_did_you_mean(found)}") from None
    return list(result)
