"""Identification plots: the CMC curve and the MegaFace rank-1 vs distractor-count curve.

Same conventions as :mod:`tfface.eval.plots` (lazy matplotlib, Agg canvas without pyplot, atomic PNG
writes, ``*_figure`` + ``plot_*`` twins).  Rates are fractions in [0, 1], drawn as percentages.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from tfface.eval.plots import DEFAULT_DPI, _new_axes, _percent_axis, save_figure


def _is_count_mapping(values) -> bool:
    """True for a ``{str(count): rate}`` mapping (the ``rank1`` of a distractor-curve report)."""
    return isinstance(values, Mapping) and bool(values) and all(
        isinstance(v, (int, float, np.integer, np.floating)) for v in values.values()
    )


def _named_rates(rates, what: str, counts=None) -> dict[str, np.ndarray]:
    """``rates`` (one curve, or ``{name: curve}``) as ``{name: float array}``, validated.

    A curve is a sequence of rates; with ``counts`` (distractor curves) it may also be a
    ``{str(count): rate}`` mapping, read in ``counts`` order.
    """
    if isinstance(rates, Mapping) and not _is_count_mapping(rates):
        named = {str(k): v for k, v in rates.items()}
    else:
        named = {"": rates}
    if not named:
        raise ValueError(f"{what}: nothing to plot")
    out = {}
    for name, values in named.items():
        label = f"{what} {name!r}" if name else what
        if counts is not None and _is_count_mapping(values):
            missing = [str(int(c)) for c in counts if str(int(c)) not in values]
            if missing:
                raise ValueError(f"{label} has no rate for distractor count(s) {', '.join(missing)}")
            values = [values[str(int(c))] for c in counts]
        arr = np.asarray(values, dtype=np.float64)
        if arr.ndim != 1 or arr.size == 0:
            raise ValueError(f"{label} must be a non-empty 1-D sequence, got shape {arr.shape}")
        if counts is not None and arr.size != len(counts):
            raise ValueError(f"{label} has {arr.size} values for {len(counts)} distractor counts")
        if not np.all(np.isfinite(arr)) or arr.min() < 0 or arr.max() > 1:
            raise ValueError(f"{label} must be finite rates in [0, 1]")
        out[name] = arr
    return out


def cmc_figure(cmc, title: str | None = None):
    """Cumulative match characteristic: identification rate (y) vs rank (x); returns the Figure.

    Args:
        cmc: identification rate at ranks 1, 2, ..., K (``cmc[0]`` is the rank-1 rate), or
            ``{name: rates}`` to compare models.  Rates are fractions in [0, 1].
        title: optional axes title.

    Raises:
        ValueError: on empty input, rates outside [0, 1], or a decreasing sequence (a CMC is cumulative;
            per-rank, non-cumulative rates are a common mix-up).
    """
    named = _named_rates(cmc, "cmc")
    for name, arr in named.items():
        if np.any(np.diff(arr) < -1e-12):
            raise ValueError(f"cmc {name!r} decreases with rank; a CMC is cumulative (rate at rank <= k)")
    fig, ax = _new_axes()
    max_rank = max(arr.size for arr in named.values())
    for k, (name, arr) in enumerate(named.items()):
        ranks = np.arange(1, arr.size + 1)
        label = f"{name} (rank-1 {arr[0]:.2%})" if name else f"rank-1 {arr[0]:.2%}"
        ax.plot(ranks, arr, color=f"C{k % 10}", marker="o" if arr.size <= 30 else None, markersize=4,
                linewidth=1.6, label=label, gid=f"cmc:{name}")
    if max_rank > 50:
        ax.set_xscale("log")
        ax.set_xlim(1, max_rank)
    else:
        ax.set_xlim(0.5, max_rank + 0.5)
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    lowest = min(float(arr.min()) for arr in named.values())
    ax.set_ylim(max(0.0, math.floor((lowest - 0.02) * 20) / 20), 1.005)
    _percent_axis(ax.yaxis)
    ax.set_xlabel("Rank")
    ax.set_ylabel("Identification rate")
    ax.grid(True, alpha=0.5)
    if title:
        ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8, framealpha=0.9)
    return fig


def plot_cmc(path, cmc, title: str | None = None, dpi: int = DEFAULT_DPI) -> str:
    """Writes the CMC curve(s) to ``path`` (PNG, atomic); returns ``path``.  See :func:`cmc_figure`."""
    return save_figure(cmc_figure(cmc, title=title), path, dpi)


def distractor_figure(counts, rank1, title: str | None = None):
    """Rank-1 identification rate (y) vs number of distractors (log x), the MegaFace curve; returns the Figure.

    Args:
        counts: gallery distractor counts, e.g. ``(10, 100, 1_000, 10_000, 100_000, 1_000_000)``; all
            > 0 (log axis).  Points are drawn in increasing count order.
        rank1: rank-1 identification rate at each count, either a sequence (same order as ``counts``) or a
            ``{str(count): rate}`` mapping such as the ``rank1`` of
            :func:`tfface.eval.identification.distractor_curve`; or ``{name: rates}`` of those to compare
            models.  Rates are fractions in [0, 1].
        title: optional axes title.

    Raises:
        ValueError: on empty input, counts <= 0 or non-finite, a length mismatch, or rates outside [0, 1].
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or counts.size == 0:
        raise ValueError(f"counts must be a non-empty 1-D sequence, got shape {counts.shape}")
    if not np.all(np.isfinite(counts)) or counts.min() <= 0:
        raise ValueError("distractor counts must be finite and > 0 (they are drawn on a log axis)")
    named = _named_rates(rank1, "rank1", counts=counts)
    order = np.argsort(counts, kind="mergesort")
    fig, ax = _new_axes()
    ax.set_xscale("log")
    for k, (name, arr) in enumerate(named.items()):
        ax.plot(counts[order], arr[order], color=f"C{k % 10}", marker="o", markersize=4, linewidth=1.6,
                label=name or None, gid=f"distractors:{name}")
    lowest = min(float(arr.min()) for arr in named.values())
    ax.set_ylim(max(0.0, math.floor((lowest - 0.02) * 20) / 20), 1.005)
    _percent_axis(ax.yaxis)
    ax.set_xlabel("Number of distractors")
    ax.set_ylabel("Rank-1 identification rate")
    ax.grid(True, which="major", alpha=0.5)
    ax.grid(True, which="minor", axis="x", alpha=0.15)
    if title:
        ax.set_title(title)
    if any(named):
        ax.legend(loc="lower left", fontsize=8, framealpha=0.9)
    return fig


def plot_distractor_curve(path, counts, rank1, title: str | None = None, dpi: int = DEFAULT_DPI) -> str:
    """Writes the rank-1 vs distractor-count curve(s) to ``path`` (PNG, atomic); returns ``path``.

    Example::

        report = distractor_curve(probes, probe_labels, distractors)
        plot_distractor_curve("megaface.png", report["counts"], {"IResNet-50": report["rank1"]})

    See :func:`distractor_figure`.
    """
    return save_figure(distractor_figure(counts, rank1, title=title), path, dpi)
