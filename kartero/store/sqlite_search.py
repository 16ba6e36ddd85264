"""SQL for search criteria (the SQLite store's prefilter): what SQLite can decide from the stored columns.

`split_criterion` puts the top-level conjuncts that fit into one WHERE clause, inside SQLite's limits on
nesting, expression depth and parameters; the rest is left to `kartero.store.search`, which checks it in
Python on the rows the query selected (the same code every backend uses).
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kartero.store import criteria as c
from kartero.store.search import operands

_HEADER_COLUMNS = {"subject": "b.subject", "from": "b.from_text", "to": "b.to_text", "cc": "b.cc_text",
                   "bcc": "b.bcc_text"}  # fmt: skip
_MAX_SQL_RANGES = 200
# SQLite refuses a statement past any of: expressions 1000 deep (SQLITE_MAX_EXPR_DEPTH), a parser stack of
# 100 entries (YYSTACKDEPTH: 25 to 45 nested parentheses, depending on the operators), 999 parameters
# (SQLITE_MAX_VARIABLE_NUMBER before 3.32). SQL made from criteria stays well inside these budgets; a part
# that would not is checked in Python instead.
_MAX_SQL_NESTING = 10
_MAX_SQL_DEPTH = 400
_MAX_SQL_PARAMS = 900
_SQL_GROUP = 32  # terms joined flat by one AND/OR, before the next level of parentheses


@dataclass(frozen=True, slots=True)
class _Sql:
    """A boolean SQL expression with its parameters, and how deep it is: `nesting` counts parentheses,
    `depth` the levels of SQLite's expression tree."""

    text: str
    params: tuple[Any, ...]
    nesting: int = 2  # leaves hold at most two levels of function-call parentheses
    depth: int = 6

    def fits(self) -> bool:
        return (
            self.nesting <= _MAX_SQL_NESTING and self.depth <= _MAX_SQL_DEPTH and len(self.params) <= _MAX_SQL_PARAMS
        )


def _sql_join(op: str, parts: Sequence[_Sql]) -> _Sql:
    """`parts` joined by AND or OR in groups of _SQL_GROUP: SQLite nests a flat `a AND b AND c ...` one level
    per term, and each group adds one level of parentheses, so n terms cost log32(n) parentheses."""
    layer = list(parts)
    while len(layer) > 1:
        groups = [layer[i : i + _SQL_GROUP] for i in range(0, len(layer), _SQL_GROUP)]
        layer = [
            _Sql(
                f" {op} ".join(f"({p.text})" for p in group),
                tuple(v for p in group for v in p.params),
                max(p.nesting for p in group) + 1,
                max(p.depth for p in group) + len(group),
            )
            for group in groups
        ]
    return layer[0]


def _day_start(date: datetime.date) -> int:
    return int(datetime.datetime(date.year, date.month, date.day, tzinfo=datetime.UTC).timestamp())


# SENT* compare the day written in Date: (sent_day, 00:00 UTC of it); rows stored before that column existed
# fall back to the UTC day of the Date header's instant, messages without a usable Date to the internal date.
_SENT_DAY = "COALESCE(b.sent_day, b.sent_date, m.internal_date)"


def _date_sql(column: str, op: c.DateOp, date: datetime.date) -> _Sql:
    start = _day_start(date)
    if op is c.DateOp.BEFORE:
        return _Sql(f"{column} < ?", (start,))
    if op is c.DateOp.ON:
        return _Sql(f"({column} >= ? AND {column} < ?)", (start, start + 86400), 3)
    return _Sql(f"{column} >= ?", (start,))


def _to_sql(criterion: c.Criterion) -> _Sql | None:
    """SQL for criteria SQLite can decide from the stored columns, within the budgets above; None for the
    rest (bodies, other header fields, what is too big), which is checked in Python. The decoded header
    columns are stored case-folded. Recursion is bounded by c.MAX_DEPTH."""
    match criterion:
        case c.All():
            return _Sql("TRUE", ())
        case c.Flag(name=name, present=present):
            return _Sql(f"instr(' ' || lower(m.flags) || ' ', ?) {'>' if present else '='} 0", (f" {name.lower()} ",))
        case c.Header(field=field, text=text) if field in _HEADER_COLUMNS and text:
            return _Sql(f"instr({_HEADER_COLUMNS[field]}, ?) > 0", (text.casefold(),))
        case c.Size(larger_than=larger, smaller_than=smaller):
            parts: list[str] = []
            params: list[int] = []
            if larger is not None:
                parts.append("m.size > ?")
                params.append(larger)
            if smaller is not None:
                parts.append("m.size < ?")
                params.append(smaller)
            return _Sql(" AND ".join(parts) or "TRUE", tuple(params))
        case c.InternalDate(op=op, date=date):
            return _date_sql("m.internal_date", op, date)
        case c.SentDate(op=op, date=date):
            return _date_sql(_SENT_DAY, op, date)
        case c.SavedDate(op=op, date=date):
            return _date_sql("COALESCE(m.saved_at, m.internal_date)", op, date)
        case c.Blob(blob_id=blob_id):
            return _Sql("m.blob_id = ?", (blob_id,))
        case c.Uids(ranges=ranges) if len(ranges) <= _MAX_SQL_RANGES:
            if not ranges:
                return _Sql("FALSE", ())
            return _sql_join("OR", [_Sql("m.uid BETWEEN ? AND ?", r) for r in ranges])
        case c.ModSeq(at_least=at_least):
            return _Sql("m.modseq >= ?", (at_least,))
        case c.Not(criterion=inner):
            sql = _to_sql(inner)
            if sql is None:
                return None
            negated = _Sql(f"NOT ({sql.text})", sql.params, sql.nesting + 1, sql.depth + 1)
            return negated if negated.fits() else None
        case c.Or() | c.And():
            terms = []
            for operand in operands(criterion):
                sql = _to_sql(operand)
                if sql is None:
                    return None
                terms.append(sql)
            if not terms:
                return _Sql("TRUE", ())
            joined = _sql_join("OR" if isinstance(criterion, c.Or) else "AND", terms)
            return joined if joined.fits() else None
    return None


def split_criterion(criterion: c.Criterion) -> tuple[str, list[Any], c.Criterion | None]:
    """(SQL WHERE, its parameters, what is left for Python or None): the top-level conjuncts that fit in
    SQL go there, up to the parameter budget; the others are checked in Python on what SQL selected."""
    items = operands(criterion) if isinstance(criterion, c.And) else [criterion]
    where: list[_Sql] = []
    rest: list[c.Criterion] = []
    param_count = 0
    for item in items:
        sql = _to_sql(item)
        if sql is None or param_count + len(sql.params) > _MAX_SQL_PARAMS:
            rest.append(item)
        else:
            where.append(sql)
            param_count += len(sql.params)
    joined = _sql_join("AND", where) if where else _Sql("TRUE", ())
    left = None if not rest else rest[0] if len(rest) == 1 else c.And(tuple(rest))
    return joined.text, list(joined.params), left
