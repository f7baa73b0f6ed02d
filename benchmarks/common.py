"""Helpers shared by the benchmark scripts: where the data is, where results go."""

from __future__ import annotations

import argparse
import json
import os
import sys
import platform
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SHARED_DATA = Path(os.environ.get("FACEMAKEUP_SHARED_DATA", ROOT.parent / "shared" / "data"))


def write_result(name: str, result: dict) -> Path:
    """Write ``benchmarks/results/NAME.json`` with the machine's description added; return its path."""
    from facemakeup.provenance import environment

    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {**result, "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()}, **environment()}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2))
    return path


def data_benchmark_args(doc: str, limit_help: str = "first N photos of each set") -> argparse.Namespace:
    """Parse ``--limit`` for a benchmark on ../shared/data; exit with a message if the data is absent."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help=limit_help)
    args = parser.parse_args()
    if not SHARED_DATA.is_dir():
        sys.exit(f"no data at {SHARED_DATA} (set FACEMAKEUP_SHARED_DATA)")
    return args
