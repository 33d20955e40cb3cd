"""Measured-table mode of the cost model (DESIGN §3): profiled op times, interpolated.

A table holds measured isolated times of one op family. Each family has key columns, one of which
is its interpolation axis, and a `seconds` column:

=================  =====================================================  =========  =========
family             key columns                                            axis       between
=================  =====================================================  =========  =========
gemm               m, n, k, dtype                                         m          linear
attention          batch, q_len, kv_len, heads, kv_heads, head_dim,       kv_len     linear
                   causal, dtype, kv_dtype (optional: default dtype)
elementwise        bytes                                                  bytes      log-log
all_reduce, ...    devices, bytes                                         bytes      log-log
send_recv          bytes                                                  bytes      log-log
=================  =====================================================  =========  =========

(`all_reduce`, `all_gather`, `reduce_scatter` and `all_to_all` share the collective columns.)
A gemm row's `dtype` is its operands' (fp8: an FP8 GEMM, whatever its output dtype); an attention
row's `dtype` is its queries' and compute dtype and `kv_dtype` its KV cache's, so a row measured
with a 16-bit cache never stands for an FP8-cache op.

`MeasuredTable.lookup(key, x)` answers for an op whose non-axis columns are `key` and whose axis
value is `x`: the measured time where a row has exactly that axis value, else the interpolation
between the two nearest measured axis values among the rows that share `key` (linear in the axis,
or linear in log(time) against log(axis)), else nothing, with the reason, so that the cost model
falls back to its roofline. No extrapolation: outside the measured range the roofline answers.

Batched GEMMs (``count > 1``) have no table columns and always use the roofline.
"""
from __future__ import annotations

import bisect
import csv
import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Iterable, Mapping

from .errors import ConfigError
from .ops import COLLECTIVES, DTYPE_BYTES, Op

COLLECTIVE_FAMILIES = COLLECTIVES
# family -> (key columns in order, the axis column, interpolation: "linear" or "loglog")
FAMILIES: Mapping[str, tuple] = MappingProxyType({
    "gemm": (("m", "n", "k", "dtype"), "m", "linear"),
    "attention": (("batch", "q_len", "kv_len", "heads", "kv_heads", "head_dim", "causal", "dtype",
                   "kv_dtype"), "kv_len", "linear"),
    "elementwise": (("bytes",), "bytes", "loglog"),
    **{kind: (("devices", "bytes"), "bytes", "loglog") for kind in COLLECTIVE_FAMILIES},
    "send_recv": (("bytes",), "bytes", "loglog"),
})
# optional key column -> the column whose value it takes when a row leaves it out
OPTIONAL_COLUMNS: Mapping[str, str] = MappingProxyType({"kv_dtype": "dtype"})
DTYPE_COLUMNS = ("dtype", "kv_dtype")
SECONDS = "seconds"
_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")
# columns that hold a size in bytes (a positive number); every other non-dtype, non-causal key
# column is a positive integer (collective `devices` at least 2: a one-device collective is free)
_BYTES_COLUMNS = ("bytes",)


def source_problem(source: Any) -> str:
    """Why `source` is not a provenance line "KIND: where it comes from" (DESIGN §3), or ""."""
    from .hardware import SOURCE_KINDS      # hardware imports this module
    if isinstance(source, str) and ":" in source:
        kind, where = (part.strip() for part in source.split(":", 1))
        if kind.lower() in SOURCE_KINDS and where:
            return ""
    return ("must read 'KIND: where it comes from' with KIND one of " + ", ".join(SOURCE_KINDS)
            + f"; got {source!r}")


def columns(family: str) -> tuple:
    """The CSV columns a table of `family` must have (other columns are ignored)."""
    return tuple(c for c in FAMILIES[family][0] if c not in OPTIONAL_COLUMNS) + (SECONDS,)


def _cell(column: str, text: str) -> Any:
    """One CSV cell as its typed value; ValueError with the reason if it is not one."""
    text = text.strip()
    if column in DTYPE_COLUMNS:
        if text not in DTYPE_BYTES:
            raise ValueError(f"{column} must be one of {', '.join(DTYPE_BYTES)}, got {text!r}")
        return text
    if column == "causal":
        low = text.lower()
        if low in _TRUE or low in _FALSE:
            return low in _TRUE
        raise ValueError(f"causal must be true or false, got {text!r}")
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{column} must be a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{column} must be a finite number > 0, got {text!r}")
    if column == SECONDS or column in _BYTES_COLUMNS:
        return value
    if value != int(value):
        raise ValueError(f"{column} must be an integer, got {text!r}")
    if column == "devices" and value < 2:
        raise ValueError(f"devices must be >= 2, got {text!r}")
    return int(value)


@dataclass(frozen=True)
class MeasuredTable:
    """Measured times of one op family: `rows` are (key, axis value, seconds) with `key` the
    non-axis key columns in `FAMILIES` order; `source` is the provenance ("measured: by whom, on
    what"); `path` the CSV it came from, if any. Build with `from_rows` or `load_table_csv`."""
    family: str
    rows: tuple
    source: str
    path: str = ""
    _groups: Mapping = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        groups: dict = {}
        for key, x, seconds in self.rows:
            groups.setdefault(key, []).append((x, seconds))
        object.__setattr__(self, "_groups", MappingProxyType(
            {key: (tuple(x for x, _ in sorted(pts)), tuple(s for _, s in sorted(pts)))
             for key, pts in groups.items()}))

    def __reduce__(self):        # picklable: rebuild the index from the rows
        return (MeasuredTable, (self.family, self.rows, self.source, self.path))

    @classmethod
    def from_rows(cls, family: str, rows: Iterable[Mapping[str, Any]], source: str,
                  where: str = "tables", path: str = "") -> "MeasuredTable":
        """A table from mappings column -> value (strings or numbers, checked as CSV cells are;
        extra columns are ignored). `source` reads "KIND: where it comes from" as in a profile.
        Raises ConfigError naming `where` and the row (1-based) on a bad or repeated row."""
        if family not in FAMILIES:
            raise ConfigError(where, family, "unknown op family; allowed: " + ", ".join(FAMILIES))
        problem = source_problem(source)
        if problem:
            raise ConfigError(where, "source", problem)
        keys, axis, _ = FAMILIES[family]
        out, seen = [], {}
        for i, row in enumerate(rows, start=1):
            values = {}
            for column in keys + (SECONDS,):
                if column in OPTIONAL_COLUMNS and str(row.get(column, "")).strip() == "":
                    values[column] = values[OPTIONAL_COLUMNS[column]]     # absent or blank
                    continue
                if column not in row:
                    raise ConfigError(where, f"row {i}", f"missing column {column!r}")
                text = row[column]
                text = str(text).lower() if isinstance(text, bool) else str(text)
                try:
                    values[column] = _cell(column, text)
                except ValueError as exc:
                    raise ConfigError(where, f"row {i}", str(exc)) from None
            key = tuple(values[c] for c in keys if c != axis)
            ident = (key, values[axis])
            if ident in seen:
                raise ConfigError(where, f"row {i}", f"repeats the shape of row {seen[ident]}")
            seen[ident] = i
            out.append((key, values[axis], values[SECONDS]))
        if not out:
            raise ConfigError(where, "", f"a {family} table needs at least one row")
        return cls(family, tuple(out), source, path)

    def lookup(self, key: tuple, x: float) -> tuple:
        """(seconds, detail) from the table, or (None, why not) when the roofline must answer."""
        keys, axis, how = FAMILIES[self.family]
        group = self._groups.get(key)
        if group is None:
            shown = ", ".join(f"{c}={v}" for c, v in zip((c for c in keys if c != axis), key))
            return None, f"no table rows with {shown}" if shown else "no table rows"
        xs, ts = group
        i = bisect.bisect_left(xs, x)
        if i < len(xs) and xs[i] == x:
            return ts[i], f"table: measured at {axis}={_fmt(x)}"
        if i == 0 or i == len(xs):
            return None, f"outside table ({axis}={_fmt(x)}, measured {_fmt(xs[0])}..{_fmt(xs[-1])})"
        x0, x1, t0, t1 = xs[i - 1], xs[i], ts[i - 1], ts[i]
        if how == "linear":
            t = t0 + (t1 - t0) * (x - x0) / (x1 - x0)
        else:
            w = math.log(x / x0) / math.log(x1 / x0)
            t = math.exp(math.log(t0) + w * math.log(t1 / t0))
        return t, f"table: interpolated between {axis}={_fmt(x0)} and {axis}={_fmt(x1)}"


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def load_table_csv(path: str, family: str, source: str) -> MeasuredTable:
    """Read a CSV table of `family` (header row naming at least `columns(family)`). Errors are
    ConfigErrors naming the CSV file and the row (1-based, the header not counted)."""
    if family not in FAMILIES:
        raise ConfigError(path, "", "unknown op family; allowed: " + ", ".join(FAMILIES))
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = [h.strip() for h in next(reader, [])]
            body = [line for line in reader if any(cell.strip() for cell in line)]
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read the {family} table: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(path, "", f"not a UTF-8 text file (byte {exc.start}); save the {family} "
                          "table as UTF-8 CSV") from None
    except csv.Error as exc:
        raise ConfigError(path, "", f"not a readable CSV file: {exc}") from None
    missing = [c for c in columns(family) if c not in header]
    if missing:
        raise ConfigError(path, "header", f"missing column(s) {', '.join(missing)}; a {family} "
                          "table needs " + ", ".join(columns(family)))
    rows = []
    for i, line in enumerate(body, start=1):
        if len(line) != len(header):
            raise ConfigError(path, f"row {i}", f"has {len(line)} cells, the header {len(header)}")
        rows.append(dict(zip(header, line)))
    return MeasuredTable.from_rows(family, rows, source, where=path, path=path)


def table_query(op: Op) -> tuple | None:
    """(family, key, axis value) of `op` in table terms, or None for an op no table covers."""
    return op.table_query()


def merge_tables(*layers: Mapping[str, MeasuredTable] | None) -> Mapping[str, MeasuredTable]:
    """Family -> table, later layers replacing earlier ones family by family; checks that each
    table is a MeasuredTable filed under its own family."""
    out: dict = {}
    for layer in layers:
        for family, table in (layer or {}).items():
            if not isinstance(table, MeasuredTable) or table.family != family:
                raise ValueError(f"tables[{family!r}] must be a MeasuredTable of family {family!r}, "
                                 f"got {table!r}")
            out[family] = table
    return MappingProxyType(out)

