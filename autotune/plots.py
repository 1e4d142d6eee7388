"""``report KERNEL --plot DIR``: PNG charts of what tuning found, per device (matplotlib, Agg backend, no display).

Two charts per (kernel, device), from the studies in a storage or from the entries of a table file:

- ``<kernel>.<device>.speedup.png``: speedup of the tuned config over the default (default µs ÷ tuned µs, the
  "tuned ÷ default" of the README) per shape, one bar chart per variant; shapes without a measured default are left
  out and counted in the title.
- ``<kernel>.<device>.roofline.png``: each tuned shape on the device's roofline. x is arithmetic intensity
  (FLOPs ÷ bytes, from the entry's achieved TFLOP/s and GB/s: both come from the kernel's cost model over the same
  median µs, so their ratio is the cost model's FLOPs per fewest bytes moved), y achieved TFLOP/s; the ceilings are
  ``min(peak TFLOP/s, intensity × peak GB/s)`` with the device profile's peaks (:mod:`autotune.device.profile`:
  measured copy bandwidth, bf16 matmul rate). A device without peaks (the interpreter) gets the points only.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import pandas as pd

from autotune.errors import UserError

COLUMNS = ["device", "device_name", "kernel", "variant", "shape", "median_us", "default_us", "speedup", "tflops",
           "gbps", "peak_gbps", "peak_tflops"]


class PlotError(UserError):
    """Plots cannot be made: matplotlib is missing, or there is nothing tuned to plot."""


def _shape_labels(shapes: list[dict[str, int]]) -> list[str]:
    """Labels naming only the dimensions that vary among ``shapes`` (all of them when none varies)."""
    varying = [d for d in shapes[0] if len({s.get(d) for s in shapes}) > 1] if shapes else []
    dims = (varying or list(shapes[0])) if shapes else []
    return [" ".join(f"{d}={s[d]}" for d in dims if d in s) for s in shapes]


def _rows(device: str, info: dict, entries) -> list[dict]:
    rows = []
    for entry in entries:
        metrics = entry.metrics
        rows.append({"device": device, "device_name": info.get("name", device), "kernel": entry.kernel,
                     "variant": entry.variant, "shape": dict(entry.shape), "median_us": entry.median_us,
                     "default_us": entry.default_median_us, "speedup": entry.speedup,
                     "tflops": metrics.get("tflops"), "gbps": metrics.get("gbps"),
                     "peak_gbps": info.get("peak_gbps") or None, "peak_tflops": info.get("peak_bf16_tflops") or None})
    return rows


def frame_from_storage(storage, kernel: str, device_key: str | None = None) -> pd.DataFrame:
    """The tuned entries of ``kernel`` in an Optuna storage (newest study per shape, as ``export`` picks them).

    Returns:
        One row per (device, variant, shape) with :data:`COLUMNS`: times in µs, ``speedup`` = default ÷ tuned (None
        without a default), achieved ``tflops`` / ``gbps`` (None when not measured), the device's ``peak_gbps`` /
        ``peak_tflops`` (None when unknown) from the device info stored on the study.
    """
    from autotune.table.export import latest_entries

    rows = []
    for device, tuned in latest_entries(storage, kernel=kernel, device_key=device_key).items():
        for item in tuned:
            rows += _rows(device, item.device_info, [item.entry])
    return pd.DataFrame(rows, columns=COLUMNS)


def frame_from_table(path: str | Path, kernel: str, device_key: str | None = None) -> pd.DataFrame:
    """Like :func:`frame_from_storage`, from the entries of a table file (device info from its sections).

    Raises:
        TableError: the table is missing, unreadable or corrupt.
    """
    from autotune.table.store import ConfigTable

    table = ConfigTable.load(path, missing_ok=False)
    rows = []
    for device in table.device_keys():
        if device_key and device != device_key:
            continue
        entries = [e for e in table.entries(device) if e.kernel == kernel]
        rows += _rows(device, table.device_info(device) or {}, entries)
    return pd.DataFrame(rows, columns=COLUMNS)


def _pyplot_free_figure(**kwargs):
    """A matplotlib Figure on the Agg canvas (no pyplot global state, no display needed).

    Raises:
        PlotError: matplotlib is not installed.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotError("plots need matplotlib, which is not installed: pip install matplotlib "
                        "(or pip install -e \".[test]\")") from None
    figure = Figure(**kwargs)
    FigureCanvasAgg(figure)
    return figure


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def speedup_png(frame: pd.DataFrame) -> bytes:
    """Bar charts of default ÷ tuned per shape, one panel per variant, for the rows of one (kernel, device).

    Raises:
        PlotError: matplotlib is missing, or no row has a measured default.
    """
    measured = frame[frame.speedup.notna()]
    if measured.empty:
        raise PlotError(f"{frame.kernel.iloc[0]} on {frame.device.iloc[0]}: no entry has a default time to compare")
    variants = list(dict.fromkeys(measured.variant))
    figure = _pyplot_free_figure(figsize=(max(5.0, 0.55 * len(measured) + 2.5 * len(variants)), 4.2),
                                 layout="constrained")
    axes = figure.subplots(1, len(variants), squeeze=False)[0]
    for ax, variant in zip(axes, variants):
        rows = measured[measured.variant == variant]
        labels = _shape_labels(list(rows["shape"]))
        values = rows.speedup.tolist()
        bars = ax.bar(range(len(values)), values, color=["tab:green" if v >= 1 else "tab:red" for v in values])
        ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize=7)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(values)), labels, rotation=60, ha="right", fontsize=7)
        geomean = math.exp(sum(math.log(v) for v in values) / len(values))
        ax.set_title(f"{variant} (geomean {geomean:.2f}×)", fontsize=9)
        ax.set_ylabel("default µs ÷ tuned µs")
    skipped = len(frame) - len(measured)
    figure.suptitle(f"{frame.kernel.iloc[0]} on {frame.device_name.iloc[0]}: tuned vs default"
                    + (f" ({skipped} shapes without a default left out)" if skipped else ""), fontsize=10)
    return _png(figure)


def roofline_png(frame: pd.DataFrame) -> bytes:
    """Achieved TFLOP/s against arithmetic intensity, with the device's ceilings when known, for one (kernel, device).

    Raises:
        PlotError: matplotlib is missing, or no row has both TFLOP/s and GB/s.
    """
    points = frame[frame.tflops.notna() & frame.gbps.notna() & (frame.gbps > 0) & (frame.tflops > 0)]
    if points.empty:
        raise PlotError(f"{frame.kernel.iloc[0]} on {frame.device.iloc[0]}: no entry has achieved TFLOP/s and GB/s")
    intensity = 1e3 * points.tflops / points.gbps  # FLOP per byte: TFLOP/s · 1e12 ÷ (GB/s · 1e9)
    figure = _pyplot_free_figure(figsize=(7.5, 5.0), layout="constrained")
    ax = figure.subplots()
    peak_gbps, peak_tflops = frame.peak_gbps.iloc[0], frame.peak_tflops.iloc[0]
    lo, hi = float(intensity.min()) / 4, float(intensity.max()) * 4
    if peak_gbps and peak_tflops and not (pd.isna(peak_gbps) or pd.isna(peak_tflops)):
        ridge = 1e3 * peak_tflops / peak_gbps
        lo, hi = min(lo, ridge / 4), max(hi, ridge * 4)
        xs = [lo, ridge, hi]
        ax.plot(xs, [min(peak_tflops, x * peak_gbps / 1e3) for x in xs], color="black", linewidth=1.2,
                label=f"ceilings: {peak_gbps:.0f} GB/s, {peak_tflops:.0f} TFLOP/s (ridge {ridge:.0f} FLOP/B)")
        title = "against the device's measured ceilings"
    else:
        title = "no measured ceilings for this device"
    for variant in dict.fromkeys(points.variant):
        rows = points[points.variant == variant]
        x = 1e3 * rows.tflops / rows.gbps
        ax.scatter(x, rows.tflops, label=variant, s=22, zorder=3)
        for xi, yi, label in zip(x, rows.tflops, _shape_labels(list(rows["shape"]))):
            ax.annotate(label, (xi, yi), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_xlabel("arithmetic intensity, FLOP per byte (cost model)")
    ax.set_ylabel("achieved TFLOP/s")
    ax.grid(True, which="both", linewidth=0.3)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(f"{frame.kernel.iloc[0]} on {frame.device_name.iloc[0]}: tuned configs, {title}", fontsize=9)
    return _png(figure)


def write_plots(frame: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """Write the two charts of every (kernel, device) in ``frame`` into ``out_dir`` (created; atomic writes).

    Args:
        frame: rows of :func:`frame_from_storage` or :func:`frame_from_table`.
        out_dir: the folder.

    Returns:
        The PNG paths written, sorted. A chart without data for it (no defaults, no rates) is skipped.

    Raises:
        PlotError: matplotlib is missing, or ``frame`` has no row or no chart could be drawn.
        UserError: the folder or a file cannot be written.
    """
    from autotune import atomic

    if frame.empty:
        raise PlotError("nothing tuned to plot")
    out = Path(out_dir)
    written, skipped = [], []
    for (kernel, device), rows in frame.groupby(["kernel", "device"], sort=True):
        order = sorted(range(len(rows)), key=lambda i: (rows.variant.iloc[i], tuple(rows["shape"].iloc[i].values())))
        rows = rows.iloc[order].reset_index(drop=True)  # shapes in numeric order within each variant
        for name, draw in (("speedup", speedup_png), ("roofline", roofline_png)):
            try:
                data = draw(rows)
            except PlotError as err:
                if "matplotlib" in str(err):
                    raise
                skipped.append(str(err))
                continue
            written.append(atomic.write_bytes(out / f"{kernel}.{device}.{name}.png", data))
    if not written:
        raise PlotError("no chart could be drawn: " + "; ".join(skipped))
    return sorted(written)


def cmd_report(*, kernel: str, storage: str, table: str | None, device: str | None, plot: str) -> int:
    """``report KERNEL --plot DIR``: the charts of a kernel's tuned shapes (from the storage, or ``--table``)."""
    from autotune import registry

    registry.get(kernel)
    if table:
        frame = frame_from_table(table, kernel, device)
    else:
        from autotune.tuning.storage import open_storage

        frame = frame_from_storage(open_storage(storage), kernel, device)
    source = table or storage
    if frame.empty:
        raise PlotError(f"no tuned {kernel} entries in {source}" + (f" for device {device}" if device else ""))
    for path in write_plots(frame, plot):
        print(path)
    return 0
