"""`montessori`: ask the results database questions from a terminal, and plan a run's accelerators.

montessori table1                                 the paper's Table 1 for every experiment
montessori query "SELECT * FROM costs"            any SQL, printed as an aligned table
montessori query queries/lineage_of_example.sql --set experiment=default --set candidate_id=final-p00000-c0
montessori plan configs/paper.yaml --gpu-memory 80GB   memory and GPUs per stage, and the run's totals
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb

DEFAULT_DB = "results/montessori.duckdb"
BUILD_HINT = "build it with `snakemake --cores 1 results/montessori.duckdb` (rule aggregate, rules/report.smk)"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _text(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list):
        return "[" + ", ".join(map(_text, value)) + "]"
    # One line per row: a newline inside a cell would break the columns.
    return str(value).replace("\n", "\\n")


def _cell(value: Any, max_width: int) -> str:
    text = _text(value)
    return text if len(text) <= max_width else text[: max_width - 1] + "…"


def format_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], max_width: int = 60) -> str:
    """Columns padded to their widest cell; numbers right-aligned, everything else left-aligned."""
    cells = [[_cell(v, max_width) for v in row] for row in rows]
    widths = [max([len(name), *(len(row[i]) for row in cells)]) for i, name in enumerate(columns)]

    def is_number(value: Any) -> bool:
        return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))

    numeric = [bool(rows) and all(is_number(row[i]) for row in rows) for i in range(len(columns))]

    def line(values: Sequence[str]) -> str:
        padded = (v.rjust(w) if right else v.ljust(w) for v, w, right in zip(values, widths, numeric))
        return "  ".join(padded).rstrip()

    return "\n".join([line(columns), line(["-" * w for w in widths]), *(line(row) for row in cells)])


def run_query(db: str | Path, sql: str, variables: dict[str, str] | None = None) -> tuple[list[str], list[tuple]]:
    """Column names and rows of the last statement of `sql`, on a read-only connection to `db`."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        for name, value in (variables or {}).items():
            con.execute(f"SET VARIABLE {name} = ?", [value])
        result = con.execute(sql)
        if result.description is None:
            return [], []
        return [d[0] for d in result.description], result.fetchall()
    finally:
        con.close()


def _variables(settings: list[str]) -> dict[str, str]:
    variables = {}
    for setting in settings:
        name, sep, value = setting.partition("=")
        if not sep or not _NAME.fullmatch(name):
            raise ValueError(f"--set {setting!r}: expected NAME=VALUE with NAME an SQL identifier")
        variables[name] = value
    return variables


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="montessori", description="Query the montessori results database (DuckDB).")
    commands = parser.add_subparsers(dest="command", required=True)
    query = commands.add_parser("query", help="run SQL, or a .sql file such as queries/costs.sql")
    query.add_argument("sql", help="SQL text, or the path of a .sql file")
    query.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE",
        help="set a DuckDB variable first; canned queries read it with getvariable('NAME')",
    )  # fmt: skip
    table1 = commands.add_parser("table1", help="print the table1 view (the paper's Table 1 layout)")
    for command in (query, table1):
        command.add_argument("--db", default=DEFAULT_DB, help=f"database file (default: {DEFAULT_DB})")
        command.add_argument("--max-width", type=int, default=60, help="cut longer cells to this many characters")
    plan = commands.add_parser(
        "plan", help="accelerator memory and GPU count of every stage of a config, and the run's totals",
        description="Reads CONFIG as `snakemake --configfile CONFIG` does (the file alone, schema defaults filled "
        "in) and each model's config.json; loads no weights.",
    )  # fmt: skip
    plan.add_argument("config", help="a config file, e.g. configs/paper.yaml")
    plan.add_argument("--gpu-memory", default="80GB", help="memory of one GPU: 80GB (default), 141GB, 80GiB")
    return parser


def _plan(args: argparse.Namespace) -> int:
    from montessori.config import ConfigError
    from montessori.model_sizes import ModelConfigError
    from montessori.plan_report import parse_memory, render

    try:
        print(render(args.config, parse_memory(args.gpu_memory)))
    except (ConfigError, ModelConfigError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "plan":
        return _plan(args)
    if not Path(args.db).exists():
        print(f"error: database {args.db} not found; {BUILD_HINT}", file=sys.stderr)
        return 1
    if args.command == "table1":
        sql, settings = "SELECT * FROM table1", []
    else:
        path = Path(args.sql)
        sql = path.read_text(encoding="utf-8") if args.sql.endswith(".sql") and path.is_file() else args.sql
        settings = args.set
    try:
        columns, rows = run_query(args.db, sql, _variables(settings))
    except (duckdb.Error, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if columns:
        print(format_table(columns, rows, args.max_width))
    return 0


if __name__ == "__main__":
    sys.exit(main())
