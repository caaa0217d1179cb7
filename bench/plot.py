"""Plot ops/s of each operation at the highest concurrency against its floors."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator  # noqa: E402
from operations import OPERATIONS  # noqa: E402
from report import BACKENDS, GRPC_FLOOR, Results  # noqa: E402

BAR_WIDTH = 0.38
COLOURS = {"SQLite": "#4c72b0", "MariaDB": "#dd8452"}


def write(results: Results, path: Path) -> None:
    """Draw grouped bars per operation with each floor as a short line over its group."""
    concurrency = max(results.concurrencies)
    specs = [
        spec
        for spec in OPERATIONS
        if any(
            (backend, spec.name, concurrency) in results.operations
            for backend in BACKENDS
        )
    ]

    figure, axes = plt.subplots(figsize=(12, 6), dpi=110)
    grpc_floor = results.floor_ops(GRPC_FLOOR, concurrency)
    sql_labelled = False
    heights: list[float] = []

    for position, spec in enumerate(specs):
        for offset, backend in enumerate(BACKENDS):
            found = results.operations.get((backend, spec.name, concurrency))
            if found is None:
                continue
            x = position + (offset - 0.5) * BAR_WIDTH
            heights.append(found.ops_per_s)
            axes.bar(
                x,
                found.ops_per_s,
                BAR_WIDTH,
                color=COLOURS[backend],
                label=backend if position == 0 else None,
            )
            axes.annotate(
                f"{found.ops_per_s:,.0f}",
                (x, found.ops_per_s),
                ha="center",
                va="bottom",
                fontsize=7,
            )

        left, right = position - BAR_WIDTH, position + BAR_WIDTH
        if grpc_floor is not None:
            axes.hlines(
                grpc_floor / spec.grpc_calls,
                left,
                right,
                colors="black",
                linestyles="dashed",
                linewidth=1.5,
                label="gRPC floor (empty call; half for refresh + verify)"
                if position == 0
                else None,
            )
        sql_floor = (
            results.floor_ops(spec.sql_floor, concurrency) if spec.sql_floor else None
        )
        if sql_floor is not None:
            axes.hlines(
                sql_floor / spec.sql_floor_calls,
                position,
                right,
                colors="#c44e52",
                linewidth=2.5,
                label=None
                if sql_labelled
                else "SQL floor for MariaDB (matching statements; half for refresh + verify)",
            )
            sql_labelled = True

    axes.set_yscale("log")
    # Bars on a log axis start at its bottom, so the bottom is a power of ten
    # below the smallest bar rather than wherever matplotlib puts it.
    axes.set_ylim(bottom=10 ** math.floor(math.log10(min(heights, default=1.0))))
    plain = FuncFormatter(lambda value, _position: f"{value:,.0f}")
    axes.yaxis.set_major_formatter(plain)
    axes.yaxis.set_minor_locator(LogLocator(subs=(2.0, 3.0, 5.0)))
    axes.yaxis.set_minor_formatter(plain)
    axes.set_xticks(range(len(specs)))
    axes.set_xticklabels([spec.name for spec in specs], rotation=20, ha="right")
    axes.set_ylabel("operations per second (log scale)")
    axes.set_title(
        f"sessiond ops/s at concurrency {concurrency} against floors measured in the same run"
        + (" (quick run)" if results.quick else "")
    )
    axes.grid(axis="y", which="both", alpha=0.3)
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=4, fontsize=9)

    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
