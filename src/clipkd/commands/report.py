"""`clipkd report`: result JSONs -> a markdown table and a bar chart."""

from __future__ import annotations

import argparse


def run_report(args: argparse.Namespace) -> int:
    from clipkd.eval.report import write_report

    table, chart = write_report(args.results, args.out)
    print(table.read_text())
    print(f"wrote {table} and {chart}")
    return 0
