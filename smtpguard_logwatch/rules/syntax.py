"""Syntax tree produced by the grammar. Every node keeps ``loc`` (character offset in its
file) so the compiler can point at the offending token; nothing here is evaluated."""

from __future__ import annotations

from dataclasses import dataclass, field

# ---------------------------------------------------------------- values and list items


@dataclass(frozen=True)
class Num:
    """A number-like token: ``200``, ``0.8``, ``80%``, ``10m``, ``1h30m`` — or a bad one
    like ``10min`` (``kind == "bad"``), reported by the compiler where it is used."""

    loc: int
    text: str
    kind: str  # "number" | "percent" | "duration" | "bad"
    value: float


@dataclass(frozen=True)
class Name:
    """An identifier: a const or list reference, a metric, dimension or action word."""

    loc: int
    name: str


Value = Num | Name


@dataclass(frozen=True)
class Item:
    """One list item as written. ``kind``: network, address, atdomain (``@x``/``@.x``),
    dotted (``example.com``/``.example.com``/``john.doe``), word (list name or user
    name), string (quoted)."""

    loc: int
    text: str
    kind: str


# ---------------------------------------------------------------- expressions


@dataclass(frozen=True)
class Metric:
    """``[distinct] NAME[(QUALIFIER)] in WINDOW``."""

    loc: int
    end: int
    distinct: bool
    name: Name
    qualifier: Name | None
    window: Value


@dataclass(frozen=True)
class Usual:
    """``usual`` (baseline of the metric on the other side) or ``usual METRIC``."""

    loc: int
    end: int
    metric: Metric | None


@dataclass(frozen=True)
class BinOp:
    """Arithmetic: ``+ - * /`` (``x`` is ``*``)."""

    loc: int
    end: int
    op: str
    op_loc: int
    left: Expr
    right: Expr


@dataclass(frozen=True)
class Compare:
    loc: int
    end: int
    op: str
    op_loc: int
    left: Expr
    right: Expr


@dataclass(frozen=True)
class KeyPred:
    """``SUBJECT [not] in TARGET``: a test on the rule's key."""

    loc: int
    end: int
    subject: Name
    negated: bool
    items: tuple[Item, ...]
    bracketed: bool


@dataclass(frozen=True)
class Authenticated:
    loc: int
    end: int


@dataclass(frozen=True)
class BoolOp:
    """``and`` / ``or`` over two or more operands."""

    loc: int
    end: int
    op: str
    items: tuple[Expr, ...]


@dataclass(frozen=True)
class Not:
    loc: int
    end: int
    item: Expr


@dataclass(frozen=True)
class Paren:
    """Parentheses, kept so texts and descriptions keep the admin's grouping."""

    loc: int
    end: int
    item: Expr


Expr = Num | Name | Metric | Usual | BinOp | Compare | KeyPred | Authenticated | BoolOp | Not \
    | Paren

# ---------------------------------------------------------------- statements


@dataclass(frozen=True)
class Include:
    loc: int
    path: str
    path_loc: int
    optional: bool


@dataclass(frozen=True)
class ConstDef:
    loc: int
    name: Name
    value: Value


@dataclass(frozen=True)
class ListDef:
    loc: int
    name: Name
    append: bool
    items: tuple[Item, ...]


@dataclass(frozen=True)
class Allow:
    loc: int
    kind: Name
    items: tuple[Item, ...]


@dataclass(frozen=True)
class Decay:
    loc: int
    half_life: Value
    dimension: Name | None


@dataclass(frozen=True)
class When:
    loc: int
    keyword: str  # "when" | "unless" | "where"
    expr: Expr


@dataclass(frozen=True)
class Add:
    loc: int
    points: Value
    temporary_loc: int | None
    temporary_for: Value | None
    for_loc: int | None
    every: Value | None
    cap: Name | None = None  # "up to ACTION": these points never lift a key past ACTION


@dataclass(frozen=True)
class BaselineClause:
    loc: int
    min_history: Value | None
    floor: Value | None


@dataclass(frozen=True)
class RuleDef:
    loc: int
    end: int
    name: Name
    dimension: Name
    clauses: tuple[When | Add | BaselineClause, ...]


@dataclass(frozen=True)
class Rate:
    """``N/UNIT`` for throttle."""

    loc: int
    count: Value
    unit: Name


@dataclass(frozen=True)
class Action:
    loc: int
    word: Name
    argument: Value | Rate | None
    duration: Value | None


@dataclass(frozen=True)
class Step:
    loc: int
    points: Value
    action: Action


@dataclass(frozen=True)
class Repeat:
    loc: int
    within: Value | None
    action: Action
    growth: Num | None
    up_to: Value | None


@dataclass(frozen=True)
class Extend:
    loc: int
    duration: Value


@dataclass(frozen=True)
class EnforceOnly:
    loc: int
    expr: Expr


@dataclass(frozen=True)
class Mode:
    """``mode simulate``: the ladder decides and notifies but nothing is enforced."""

    loc: int
    word: Name


@dataclass(frozen=True)
class LadderDef:
    loc: int
    dimension: Name
    clauses: tuple[Step | Repeat | Extend | EnforceOnly | Mode, ...] = field(default=())


Statement = Include | ConstDef | ListDef | Allow | Decay | RuleDef | LadderDef
