"""The SQL of the "For downstream consumers" section (docs/downstream.md), as written.

Every fenced ```sql block of that section is returned; its first line is a comment
naming the engine that runs it (`-- ClickHouse...` or `-- DuckDB...`), and a block
that names neither is an error, so no statement of the section goes unchecked.
Statements are split on semicolons outside quotes and comments; the last one of a
block may go without (an `INSERT ... FORMAT` whose data follows it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "docs" / "downstream.md"
SECTION = "## For downstream consumers"
CLICKHOUSE = "clickhouse"
DUCKDB = "duckdb"
_FENCE = re.compile(r"^```sql[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class SqlBlock:
    engine: str  # CLICKHOUSE or DUCKDB
    statements: tuple[str, ...]


def section(text: str) -> str:
    """The text of the downstream section: from its heading to the next `## ` heading."""
    start = text.find(SECTION)
    if start < 0:
        raise ValueError(f"no {SECTION!r} section in docs/downstream.md")
    end = text.find("\n## ", start + len(SECTION))
    return text[start : end if end >= 0 else len(text)]


def blocks(text: str | None = None) -> list[SqlBlock]:
    """The section's ```sql blocks, in order (docs/downstream.md when text is None)."""
    if text is None:
        text = README.read_text(encoding="utf-8")
    found = []
    for match in _FENCE.finditer(section(text)):
        body = match.group(1)
        first = body.lstrip().splitlines()[0].lower() if body.strip() else ""
        if first.startswith("-- clickhouse"):
            engine = CLICKHOUSE
        elif first.startswith("-- duckdb"):
            engine = DUCKDB
        else:
            raise ValueError(f"a sql block whose first line names no engine: {first[:60]!r}")
        found.append(SqlBlock(engine, tuple(split(body))))
    if not found:
        raise ValueError("no ```sql block in the downstream section")
    return found


def statements(engine: str, text: str | None = None) -> list[str]:
    return [s for b in blocks(text) if b.engine == engine for s in b.statements]


def split(sql: str) -> list[str]:
    """Statements of a block: split on `;` outside quotes and comments, comments kept."""
    out: list[str] = []
    current: list[str] = []
    quote: str | None = None
    i = 0
    while i < len(sql):
        ch = sql[i]
        if quote:
            current.append(ch)
            if ch == "\\" and i + 1 < len(sql):
                current.append(sql[i + 1])
                i += 1
            elif ch == quote:
                quote = None
        elif ch in "'\"`":
            quote = ch
            current.append(ch)
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            end = len(sql) if end < 0 else end
            current.append(sql[i:end])
            i = end
            continue
        elif ch == ";":
            out.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    out.append("".join(current))
    return [s.strip() for s in out if _code(s)]


def _code(statement: str) -> str:
    """The statement without its comment lines and blank space (empty: nothing to run)."""
    lines = (line.split("--", 1)[0].strip() for line in statement.splitlines())
    return " ".join(line for line in lines if line)


def kind(statement: str) -> str:
    """The statement's first keyword, upper case: CREATE, INSERT, SELECT, ..."""
    return _code(statement).split(None, 1)[0].upper()
