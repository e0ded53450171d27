"""Memberships in PostgreSQL, exported with COPY from one consistent snapshot.

PostgreSQL itself renders the CSV (``COPY (SELECT …) TO STDOUT WITH (FORMAT csv)``): it is
the fastest path measured (≈ psql's own ``\\copy``) and keeps the client's memory flat.
The SELECT does the formatting the CSV promises, so no row is touched in Python. Which
columns, in which order, and which rows come from the export's ``ExportSelection``
(``export_query``); JSON lines and the xlsx sheet's rows are rendered by PostgreSQL too,
typed formats read a plain rendering (see ``Rendering``).

- text a spreadsheet would evaluate as a formula gets a leading ``'`` (OWASP),
- timestamps are ISO 8601 in UTC with a ``Z`` (fractional seconds only when present), or
  with the offset of the export's time zone (``+01:00``) when it asked for one,
- booleans are ``true``/``false``, dates ``YYYY-MM-DD``, money an exact decimal.
"""

from __future__ import annotations

import asyncio
import zoneinfo
from collections.abc import Awaitable, Callable, Coroutine
from datetime import datetime, time
from typing import Any, Literal, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from exporter.csvstream import FORMULA_TRIGGERS
from exporter.errors import StoreUnavailable
from exporter.selection import ALL, COLUMNS, DEFAULT_TIME_ZONE, ExportSelection

Conn: TypeAlias = "asyncpg.Connection[Any] | PoolConnectionProxy[Any]"
Sink = Callable[[bytes], Coroutine[Any, Any, None]]


# Code points of the triggers: ascii() of the first character compares as an integer and
# allocates nothing, where left(x, 1) IN (...) built a text per row (measured at 1M rows:
# the export's SQL about a quarter faster; docs/benchmarks.md).
_TRIGGER_CODES_SQL = ", ".join(str(ord(t)) for t in FORMULA_TRIGGERS)


def safe_text(expr: str) -> str:
    """SQL that neutralises a leading formula trigger in a text column."""
    neutralised = "'''' || " + expr
    return f"CASE WHEN ascii({expr}) IN ({_TRIGGER_CODES_SQL}) THEN {neutralised} ELSE {expr} END"


def utc_timestamp(expr: str) -> str:
    """SQL for ISO 8601 UTC text: 2026-11-26T09:30:00Z (needs DateStyle ISO)."""
    return f"replace(({expr} AT TIME ZONE 'UTC')::text, ' ', 'T') || 'Z'"


def local_timestamp(expr: str) -> str:
    """SQL for ISO 8601 text in the transaction's TimeZone with its offset:
    2026-11-26T10:30:00+01:00 (``copy_memberships`` sets TimeZone; needs DateStyle ISO)."""
    return f"replace(({expr})::timestamp::text, ' ', 'T') || to_char({expr}, 'TZH:TZM')"


# Where each documented column (``selection.COLUMNS``) comes from. Stable: users script on it.
_SOURCES: dict[str, str] = {
    "membership_id": "m.guid",
    "organization_id": "o.guid",
    "organization_name": "o.name",
    "plan": "m.plan",
    "status": "m.status",
    "role": "m.role",
    "started_on": "m.started_on",
    "ends_on": "m.ends_on",
    "auto_renew": "m.auto_renew",
    "price": "m.price",
    "currency": "m.currency",
    "created_at": "m.created_at",
    "updated_at": "m.updated_at",
}
# Free text: a spreadsheet could run it as a formula, so CSV neutralises it. A CHECK
# constraint limits status to five lower-case words (migration 0001), so no value can
# start with a trigger; tests/store/test_memberships.py pins the constraint.
_FREE_TEXT = frozenset({"organization_name", "plan", "role"})
_TIMESTAMPS = frozenset({"created_at", "updated_at"})

# How the rows leave PostgreSQL:
# - "csv": text as the CSV promises (formula neutralisation, ISO 8601 timestamps with Z or
#   the offset of the chosen time zone, true/false);
# - "json": one JSON object per row (the JSONL file), values exact, timestamps as in CSV;
# - "typed": exact values for a typed reader (``formats/arrow.py``): timestamps as UTC
#   wall-clock text, booleans true/false, NULL as an unquoted empty field;
# - "xlsx": one SpreadsheetML ``<row>`` per line, its cells typed and escaped for XML
#   (``xlsx_cell_sql``), for ``formats/xlsx.py`` to stream into the workbook's sheets.
Rendering = Literal["csv", "json", "typed", "xlsx"]


def column_sql(name: str, *, render: Rendering, utc: bool) -> str:
    """The SQL of one documented column; ``name`` must come from ``selection.COLUMNS``."""
    source = _SOURCES[name]
    if name in _TIMESTAMPS:
        if render == "typed":
            return f"({source} AT TIME ZONE 'UTC')"
        return utc_timestamp(source) if utc else local_timestamp(source)
    if render == "csv" and name in _FREE_TEXT:
        return safe_text(source)
    if name == "auto_renew" and render != "json":
        return f"{source}::text"
    return source


def json_value_sql(name: str, *, utc: bool) -> str:
    """SQL for one column as JSON text. Only free text needs JSON's escaping (to_json);
    UUIDs, dates, timestamps, the five statuses and currency codes (CHECK constraints in
    migration 0001) never hold a character JSON escapes, so they are quoted as they are.
    Building the object by concatenation measured ~1.5x faster than json_build_object."""
    expr = column_sql(name, render="json", utc=utc)
    if name in _FREE_TEXT:
        value = f"to_json({expr})::text"
    elif name in ("auto_renew", "price"):
        value = f"{expr}::text"  # true/false; an exact decimal number
    else:
        value = f"'\"' || {expr} || '\"'"
    return f"coalesce({value}, 'null')"


# Excel's limit on the characters of one cell: longer text is cut to its first 32,767.
XLSX_CELL_MAX_CHARS = 32_767
# Cell styles of xl/styles.xml (``formats/xlsx.py`` writes it): 0 plain, 1 the bold header.
XLSX_STYLE_DATE, XLSX_STYLE_DATETIME, XLSX_STYLE_PRICE = 2, 3, 4
# Excel's serial day number of 1970-01-01 (day 0 is 1899-12-30 in the 1900 date system).
_EXCEL_UNIX_EPOCH = 25_569
# Characters XML 1.0 cannot hold (tab, LF and CR it can; PostgreSQL text has no NUL), as
# a PostgreSQL regular expression.
_XML_INVALID = r"[\x01-\x08\x0B\x0C\x0E-\x1F\uFFFE\uFFFF]"
# What any of the escaping below applies to (tab, which needs none, takes the slow path too).
_NEEDS_ESCAPING = r"[\x01-\x1F&<>\uFFFE\uFFFF]|_x"


def xlsx_text_sql(expr: str) -> str:
    """SQL for free text as the content of an inline string's ``<t>``, which Excel shows
    exactly as PostgreSQL holds it (ECMA-376 ST_Xstring):

    - cut to Excel's 32,767 characters per cell (``XLSX_CELL_MAX_CHARS``);
    - a literal ``_xHHHH_`` (which Excel would decode) gets its ``_`` escaped: ``_x005F_``;
    - characters XML cannot hold become ``_xHHHH_`` (Excel shows the character again);
    - ``& < >`` become entities, LF and CR ``&#10;`` and ``&#13;`` (a parser would read a
      raw CR as LF; and each row stays on one line of the COPY).

    Most values need none of it: one regular-expression match (and the length in bytes)
    lets them through as they are, and only the rest take the slow path (measured at 100k
    rows on a busy machine: the slow path ~4.4 us per value, the match ~0.4 us).
    """
    text = f"left({expr}, {XLSX_CELL_MAX_CHARS})"
    text = (
        f"CASE WHEN strpos({text}, '_x') > 0"
        f" THEN regexp_replace({text}, '_(x[0-9A-Fa-f]{{4}}_)', '_x005F_\\1', 'g')"
        f" ELSE {text} END"
    )
    escaped = (
        f"(SELECT string_agg(CASE WHEN c ~ '{_XML_INVALID}'"  # noqa: S608 (no input: constants)
        " THEN '_x' || lpad(upper(to_hex(ascii(c))), 4, '0') || '_' ELSE c END, '' ORDER BY n)"
        f" FROM regexp_split_to_table({text}, '') WITH ORDINALITY AS chars(c, n))"
    )
    text = f"CASE WHEN {text} ~ '{_XML_INVALID}' THEN {escaped} ELSE {text} END"
    for char, entity in (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;")):
        text = f"replace({text}, '{char}', '{entity}')"
    slow = rf"replace(replace({text}, E'\n', '&#10;'), E'\r', '&#13;')"
    # Bytes: a text of at most 32,767 bytes has at most 32,767 characters.
    plain = f"octet_length({expr}) <= {XLSX_CELL_MAX_CHARS} AND {expr} !~ '{_NEEDS_ESCAPING}'"
    return f"CASE WHEN {plain} THEN {expr} ELSE {slow} END"


def xlsx_cell_sql(name: str, *, utc: bool) -> str:
    """SQL for one column as a SpreadsheetML cell ``<c>``, without an ``r`` reference
    (optional in ECMA-376: cells and rows follow each other in order). Text is an inline
    string (``t="inlineStr"``: never a formula, whatever it starts with); dates and
    timestamps are Excel serial day numbers (timestamps the wall-clock time in the
    transaction's TimeZone, which ``copy_memberships`` sets); price a number, auto_renew a
    boolean; NULL an empty ``<c/>``, so the cells after it keep their columns."""
    source = _SOURCES[name]
    if name in ("started_on", "ends_on"):
        days = f"({source} - date '1970-01-01' + {_EXCEL_UNIX_EPOCH})"
        cell = f"'<c s=\"{XLSX_STYLE_DATE}\"><v>' || {days} || '</v></c>'"
        return f"coalesce({cell}, '<c/>')" if name == "ends_on" else cell
    if name in _TIMESTAMPS:
        wall = f"({source} AT TIME ZONE 'UTC')" if utc else f"{source}::timestamp"
        # date_part is a double (extract's numeric is slower), written shortest-exact.
        days = f"(date_part('epoch', {wall}) / 86400 + {_EXCEL_UNIX_EPOCH})"
        return f"'<c s=\"{XLSX_STYLE_DATETIME}\"><v>' || {days} || '</v></c>'"
    if name == "price":
        return f"'<c s=\"{XLSX_STYLE_PRICE}\"><v>' || {source} || '</v></c>'"
    if name == "auto_renew":
        true, false = '<c t="b"><v>1</v></c>', '<c t="b"><v>0</v></c>'
        return f"CASE WHEN {source} THEN '{true}' ELSE '{false}' END"
    if name in _FREE_TEXT:
        text = xlsx_text_sql(source)
        return f"""'<c t="inlineStr"><is><t xml:space="preserve">' || {text} || '</t></is></c>'"""
    # UUIDs, the five statuses, currency codes (CHECK constraints in migration 0001): no
    # character XML escapes, no leading or trailing space.
    return f"""'<c t="inlineStr"><is><t>' || {source} || '</t></is></c>'"""


def export_query(
    user_id: str, selection: ExportSelection = ALL, *, render: Rendering = "csv"
) -> tuple[str, list[Any]]:
    """The export's SELECT and its arguments, in ``selection``'s column order and filtered
    by it in SQL.

    Nothing from the caller is formatted into the text: column names are looked up in the
    fixed ``_SOURCES`` (an unknown one is a KeyError, never SQL), and every filter value is
    a ``$n`` argument. COPY takes no bind parameters, so asyncpg's ``copy_from_query``
    inlines the arguments by asking PostgreSQL itself to ``quote_literal`` each one (cast to
    the type the prepared query expects); and the values are already typed and validated
    (``ExportSelection``: user id, enum members, dates), so even that quoting only ever sees
    plain words and dates.
    """
    selection.check()
    utc = selection.time_zone == DEFAULT_TIME_ZONE
    exprs = [(name, column_sql(name, render=render, utc=utc)) for name in selection.columns]
    if render == "json":
        members = " || ',' || ".join(
            f"'\"{name}\":' || {json_value_sql(name, utc=utc)}" for name in selection.columns
        )
        select = f"'{{' || {members} || '}}'"
    elif render == "xlsx":
        cells = " || ".join(xlsx_cell_sql(name, utc=utc) for name in selection.columns)
        select = f"'<row>' || {cells} || '</row>'"
    else:
        select = ", ".join(f"{expr} AS {name}" for name, expr in exprs)
    where, args = _filters(user_id, selection)
    query = (
        f"SELECT {select}"  # noqa: S608 (names from _SOURCES; values are $n arguments)
        " FROM memberships m JOIN organizations o ON o.id = m.organization_id"
        f" WHERE {where} ORDER BY m.id"
    )
    return query, args


def _filters(user_id: str, selection: ExportSelection) -> tuple[str, list[Any]]:
    """The WHERE clause of ``selection``'s rows and its ``$n`` arguments."""
    args: list[Any] = [user_id]

    def bind(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    where = ["m.user_id = $1"]
    if selection.statuses:
        where.append(f"m.status = ANY({bind(list(selection.statuses))}::text[])")
    if selection.plan is not None:
        where.append(f"m.plan = {bind(selection.plan)}::text")
    if selection.started_from is not None and selection.started_to is not None:
        where.append(
            f"m.started_on BETWEEN {bind(selection.started_from)}::date"
            f" AND {bind(selection.started_to)}::date"
        )
    if selection.updated_since is not None:
        # Midnight of that day where the user is (their time zone), as an instant.
        since = datetime.combine(
            selection.updated_since, time(), tzinfo=zoneinfo.ZoneInfo(selection.time_zone)
        )
        where.append(f"m.updated_at >= {bind(since)}::timestamptz")
    return " AND ".join(where), args


# The full export, as before issue 17 (the CSV oracle tests compare with it).
EXPORT_HEADER: tuple[str, ...] = COLUMNS
EXPORT_QUERY = export_query("")[0]

# JSON lines (and xlsx rows: their text keeps no control character) leave COPY as CSV
# whose quote and delimiter are control bytes that PostgreSQL's JSON never contains (it
# writes every character below U+0020 as \\uXXXX) and whose rows hold one field and no line
# break: so no field is ever quoted and the bytes are exactly the JSON. (COPY's text format
# would double every backslash.)
LINE_COPY_OPTIONS: dict[str, str] = {"format": "csv", "quote": "\x01", "delimiter": "\x02"}


# Dates as COPY writes them into every format: 2026-12-02 (ISO, year-month-day).
EXPORT_DATESTYLE = "ISO, YMD"


async def copy_memberships(
    conn: Conn,
    user_id: str,
    sink: Sink,
    *,
    selection: ExportSelection = ALL,
    render: Rendering = "csv",
    header: bool = True,
    on_start: Callable[[int], Awaitable[None]] | None = None,
    before_copy: Callable[[Conn], Awaitable[None]] | None = None,
    timeout_s: float | None = None,
) -> int:
    """Stream the user's memberships as CSV bytes (header first) into ``sink``; returns rows.

    A read-only REPEATABLE READ transaction pins one snapshot; COPY streams it without
    ever holding more than a network buffer on the client. With ``on_start``, the rows are
    first counted in that same snapshot (an index-only scan of ``(user_id, id)`` when no
    filter applies) and ``on_start(total)`` runs before the first byte, so the total is
    exactly what COPY sends. ``timeout_s`` bounds the COPY instead of the pool's
    per-command timeout, which is sized for short queries, not for streaming millions of
    rows. ``render="json"`` sends one JSON object per line and no header.
    """
    query, args = export_query(user_id, selection, render=render)
    options: dict[str, Any] = (
        dict(LINE_COPY_OPTIONS)
        if render in ("json", "xlsx")
        else {"format": "csv", "header": header}
    )
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        if conn.get_settings().DateStyle != EXPORT_DATESTYLE:  # the pools' connections: set
            await conn.execute(f"SET LOCAL DateStyle = '{EXPORT_DATESTYLE}'")
        if render == "xlsx":
            # Compiling the xlsx row's large expression took ~0.4 s, more than JIT saved
            # even at 1,000,000 rows (measured: docs/benchmarks.md).
            await conn.execute("SET LOCAL jit = off")
        if selection.time_zone != DEFAULT_TIME_ZONE:
            # set_config takes a bind parameter where SET cannot; local to this transaction.
            await conn.execute("SELECT set_config('TimeZone', $1, true)", selection.time_zone)
        if on_start is not None:
            await on_start(await count_memberships(conn, user_id, selection))
        if before_copy is not None:
            await before_copy(conn)
        status = await conn.copy_from_query(query, *args, output=sink, timeout=timeout_s, **options)
    return int(status.split()[-1])


# What a failed count looks like (PostgreSQL down, restarting, refusing connections).
PG_UNAVAILABLE: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    OSError,
    TimeoutError,
)


async def estimate_rows(pool: asyncpg.Pool[Any], user_id: str, *, timeout_s: float) -> int:
    """The user's rows as an export would hold them now (the index-only count the run
    repeats in its snapshot), within ``timeout_s``; raises ``StoreUnavailable``."""
    try:
        async with asyncio.timeout(timeout_s), pool.acquire() as conn:
            return await count_memberships(conn, user_id)
    except PG_UNAVAILABLE as exc:
        raise StoreUnavailable(f"counting rows: {type(exc).__name__}") from exc


async def count_memberships(conn: Conn, user_id: str, selection: ExportSelection = ALL) -> int:
    """How many memberships the user has, or the export's filters leave (in the caller's
    snapshot, if it holds one)."""
    if not selection.filtered:
        sql = "SELECT count(*) FROM memberships WHERE user_id = $1"
        return int(await conn.fetchval(sql, user_id))
    where, args = _filters(user_id, selection)
    value = await conn.fetchval(f"SELECT count(*) FROM memberships m WHERE {where}", *args)  # noqa: S608
    return int(value)


# How many first rows ``text_lengths`` looks at: enough to see the usual lengths, cheap
# next to the export (an index range of the user's rows, no sort).
TEXT_SAMPLE_ROWS = 10_000


async def text_lengths(
    conn: Conn, user_id: str, selection: ExportSelection, *, sample: int = TEXT_SAMPLE_ROWS
) -> dict[str, int]:
    """The longest value, in characters, of each free-text column ``selection`` holds, over
    its first ``sample`` rows (in the caller's snapshot, if it holds one): what the xlsx
    sheet sizes its columns by before the rows stream."""
    names = [name for name in selection.columns if name in _FREE_TEXT]
    if not names:
        return {}
    where, args = _filters(user_id, selection)
    inner = ", ".join(f"{_SOURCES[name]} AS {name}" for name in names)
    outer = ", ".join(f"coalesce(max(length({name})), 0)" for name in names)
    query = (
        f"SELECT {outer} FROM (SELECT {inner}"  # noqa: S608 (names from _SOURCES)
        " FROM memberships m JOIN organizations o ON o.id = m.organization_id"
        f" WHERE {where} ORDER BY m.id LIMIT {int(sample)}) AS first_rows"
    )
    row = await conn.fetchrow(query, *args)
    assert row is not None  # an aggregate always returns one row
    return {name: int(row[i]) for i, name in enumerate(names)}
