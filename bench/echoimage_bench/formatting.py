"""How the benchmark's reports are written: markdown tables, numbers in table cells, and
JSON-ready values."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]],
                   align: Sequence[str] | None = None) -> str:
    """A GitHub markdown table; align holds "l" or "r" per column (default: l then r)."""
    if align is None:
        align = ["l"] + ["r"] * (len(headers) - 1)
    if len(align) != len(headers):
        raise ValueError("align must have one entry per column")
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"row has {len(row)} cells, expected {len(headers)}")

    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |",
             "|" + "|".join("---:" if a == "r" else ":---" for a in align) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt_rate(x: float | None, digits: int = 3) -> str:
    """A rate for a table cell; an em dash for None."""
    return "—" if x is None else f"{x:.{digits}f}"


def fmt_ms(x: float | None) -> str:
    """Milliseconds for a table cell."""
    return "—" if x is None else f"{x:.1f} ms"


def jsonable(x: Any) -> Any:
    """Round floats, turn numpy scalars and non-finite floats into JSON values."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [jsonable(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float):
        return round(x, 4) if math.isfinite(x) else None
    return x
