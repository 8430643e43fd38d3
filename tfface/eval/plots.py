"""Verification plots: ROC on a log FAR axis and genuine/impostor score histograms (CMC and distractor
curves: :mod:`tfface.eval.identification_plots`, which shares this module's canvas and atomic write).

matplotlib is an optional dependency (``pip install 'tfface[plots]'``).  It is imported only when a plot
is made, and only through :class:`matplotlib.figure.Figure` and the Agg canvas: ``matplotlib.pyplot`` is
never imported, no global state (backend, rcParams, current figure) is changed, no window is ever
opened, and plots can be made on a headless server or from worker threads (one figure per call).

Every plot comes in two layers:

* ``*_figure(...)`` builds and returns the :class:`~matplotlib.figure.Figure` (to inspect or restyle it,
  then write it with :func:`save_figure`);
* ``plot_*(path, ...)`` builds the figure and writes it as a PNG, returning ``path``.

Writes are atomic: the PNG is rendered into memory first and then written with
:func:`tfface.fileio.atomic_write_bytes`, so ``path`` holds either the previous file or the complete new
one, never a half-written image.

Scores follow :mod:`tfface.eval.verification`: similarities, higher = more likely the same person, a
pair accepted when ``score >= threshold``.  Rates (TAR, FAR, identification rates) are fractions in
[0, 1]; the axes print them as percentages (FAR keeps the 10^-k decades of a log axis).
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from tfface.eval.verification import _check_inputs, roc_curve
from tfface.fileio import atomic_write_bytes

DEFAULT_DPI = 150
_FIGSIZE = (7.0, 5.0)
# Same (genuine) / different (impostor) colours of the histogram; threshold lines use the next ones.
_GENUINE_COLOR = "tab:blue"
_IMPOSTOR_COLOR = "tab:orange"
_LINE_COLORS = ("tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:gray", "tab:olive",
                "tab:cyan")
_LINE_STYLES = ("--", "-.", ":", (0, (5, 1, 1, 1, 1, 1)))


def _matplotlib():
    """Imports matplotlib lazily; a clear ImportError naming the ``plots`` extra if it is missing."""
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import PercentFormatter
    except ImportError as e:
        raise ImportError(
            "tfface.eval.plots needs matplotlib, an optional dependency: pip install 'tfface[plots]' "
            "(or pip install matplotlib)"
        ) from e
    return Figure, FigureCanvasAgg, PercentFormatter


def _new_axes(figsize=_FIGSIZE):
    """A fresh Figure on its own Agg canvas (no pyplot) and its single Axes."""
    Figure, FigureCanvasAgg, _ = _matplotlib()
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _percent_axis(axis) -> None:
    _, _, PercentFormatter = _matplotlib()
    axis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=None))


def save_figure(fig, path, dpi: int = DEFAULT_DPI) -> str:
    """Writes ``fig`` to ``path`` as a PNG, atomically.

    The image is rendered into memory first (``fig.savefig(BytesIO, format="png")``) and then written
    with :func:`tfface.fileio.atomic_write_bytes`: if rendering fails nothing is written, and a reader
    never sees a half-written file.  Missing parent directories are created.

    Returns:
        ``path`` as a string.
    """
    path = os.fspath(path)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    atomic_write_bytes(path, buf.getvalue())
    return path


# ---------------------------------------------------------------------------------------------- ROC


@dataclass(frozen=True)
class RocCurve:
    """An exact ROC curve and the pair counts it was measured on (see :func:`roc_from_scores`).

    Attributes:
        fpr: false accept rate per operating point, non-decreasing, starting at 0.
        tpr: true accept rate per operating point.
        num_negatives: number of different-identity pairs; ``1 / num_negatives`` is the smallest
            FAR that can be measured and where the log FAR axis starts.
        num_positives: number of same-identity pairs (0 if unknown).
    """

    fpr: np.ndarray
    tpr: np.ndarray
    num_negatives: int
    num_positives: int = 0


def roc_from_scores(scores, issame) -> RocCurve:
    """The exact ROC of ``scores`` (see :func:`tfface.eval.verification.roc_curve`) as a :class:`RocCurve`.

    Raises:
        ValueError: on empty or mismatched inputs, non-finite scores, or if either class is missing.
    """
    fpr, tpr, _ = roc_curve(scores, issame)
    _, labels = _check_inputs(scores, issame)
    n_pos = int(np.sum(labels))
    return RocCurve(fpr=fpr, tpr=tpr, num_negatives=int(labels.size - n_pos), num_positives=n_pos)


def _as_roc(name: str, curve) -> tuple[np.ndarray, np.ndarray, float]:
    """Validates one ROC curve; returns ``(fpr, tpr, smallest_measurable_far)``."""
    if isinstance(curve, RocCurve):
        fpr, tpr, n_neg = curve.fpr, curve.tpr, int(curve.num_negatives)
        if n_neg < 1:
            raise ValueError(f"curve {name!r}: num_negatives must be >= 1, got {n_neg}")
    elif isinstance(curve, (tuple, list)) and len(curve) in (2, 3):
        fpr, tpr, n_neg = curve[0], curve[1], None  # a third element (roc_curve's thresholds) is ignored
    else:
        raise ValueError(
            f"curve {name!r}: expected a RocCurve (roc_from_scores(scores, issame)) or an (fpr, tpr) "
            f"or (fpr, tpr, thresholds) tuple, got {type(curve).__name__}"
        )
    fpr = np.asarray(fpr, dtype=np.float64)
    tpr = np.asarray(tpr, dtype=np.float64)
    if fpr.ndim != 1 or tpr.ndim != 1:
        raise ValueError(f"curve {name!r}: fpr and tpr must be 1-D, got shapes {fpr.shape} and {tpr.shape}")
    if fpr.shape != tpr.shape:
        raise ValueError(f"curve {name!r}: fpr and tpr differ in length: {fpr.size} vs {tpr.size}")
    if fpr.size == 0:
        raise ValueError(f"curve {name!r} is empty")
    if not (np.all(np.isfinite(fpr)) and np.all(np.isfinite(tpr))):
        raise ValueError(f"curve {name!r}: fpr/tpr contain NaN or inf")
    if fpr.min() < 0 or fpr.max() > 1 or tpr.min() < 0 or tpr.max() > 1:
        raise ValueError(f"curve {name!r}: fpr and tpr must lie in [0, 1]")
    if np.any(np.diff(fpr) < 0) or np.any(np.diff(tpr) < 0):
        raise ValueError(f"curve {name!r}: fpr and tpr must be non-decreasing (strictest threshold first)")
    positive = fpr[fpr > 0]
    if positive.size == 0:
        raise ValueError(f"curve {name!r} has no point with FAR > 0; nothing to show on a log FAR axis")
    min_far = 1.0 / n_neg if n_neg is not None else float(positive.min())
    return fpr, tpr, min_far


def _eer_point(fpr: np.ndarray, tpr: np.ndarray) -> float | None:
    """EER as :func:`tfface.eval.verification.eer` computes it (linear interpolation of the crossing)."""
    diff = (1.0 - tpr) - fpr  # FRR - FAR, non-increasing along the curve
    hits = np.flatnonzero(diff <= 0)
    if hits.size == 0:
        return None
    i = int(hits[0])
    if diff[i] == 0 or i == 0:
        return float(fpr[i])
    t = diff[i - 1] / (diff[i - 1] - diff[i])
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


def _tar_at(fpr: np.ndarray, tpr: np.ndarray, far: float) -> float:
    """TAR at the last exact point with FAR <= ``far`` (the :func:`~tfface.eval.verification.tar_at_far` policy)."""
    i = int(np.searchsorted(fpr, far * (1 + 1e-12), side="right")) - 1
    return float(tpr[max(i, 0)])


def _check_fars(fars) -> list[float]:
    out = [float(f) for f in np.asarray(list(fars), dtype=np.float64).reshape(-1)]
    for f in out:
        if not (0 < f <= 1):
            raise ValueError(f"fars_marked must lie in (0, 1], got {f}")
    return out


def roc_figure(curves: Mapping, fars_marked: Sequence[float] | None = None, title: str | None = None,
               mark_eer: bool = True):
    """ROC curves with a log-scale FAR (x) axis and a linear TAR (y) axis; returns the Figure.

    Args:
        curves: ``{name: curve}`` in legend order, each curve a :class:`RocCurve` (from
            :func:`roc_from_scores`, preferred: it knows the number of negative pairs) or an
            ``(fpr, tpr)`` / ``(fpr, tpr, thresholds)`` tuple such as
            :func:`tfface.eval.verification.roc_curve` returns.
        fars_marked: FARs at which to mark (and label) each curve's TAR, e.g. ``(1e-4, 1e-3)``.  The TAR
            follows the :func:`~tfface.eval.verification.tar_at_far` policy (last exact point with
            FAR <= target, no interpolation) and is drawn at the target FAR, on the curve's horizontal
            step.  FARs below a curve's smallest measurable FAR are skipped for that curve.
        title: optional axes title.
        mark_eer: mark each curve's equal error rate (FAR = 1 - TAR) and put it in the legend.

    The FAR = 0 end of the curve cannot be drawn on a log axis.  The x axis therefore starts at the
    smallest FAR that can be measured, ``1 / num_negatives`` (one false accept), taken as the smallest over
    the curves; for a tuple curve, where the number of negatives is unknown, its smallest positive FAR is
    used instead (the same for an exact ROC unless its strictest thresholds tie several negatives).  The
    axis ends at FAR = 1.  Curves are the exact operating points joined by lines, i.e. the step-wise ROC
    (a diagonal only where a threshold accepts tied same and different pairs together).  The TAR axis
    starts just below the lowest TAR visible in that range.

    Raises:
        ValueError: on an empty mapping, malformed curves (mismatched lengths, values outside [0, 1],
            decreasing), a curve without any FAR > 0, or ``fars_marked`` outside (0, 1].
    """
    if not isinstance(curves, Mapping):
        raise ValueError(f"curves must be a mapping {{name: curve}}, got {type(curves).__name__}")
    if not curves:
        raise ValueError("curves is empty: nothing to plot")
    fars = _check_fars(fars_marked) if fars_marked is not None else []
    parsed = {str(name): _as_roc(str(name), curve) for name, curve in curves.items()}
    left = min(min_far for _, _, min_far in parsed.values())

    fig, ax = _new_axes()
    ax.set_xscale("log")
    ymin = 1.0
    for k, (name, (fpr, tpr, min_far)) in enumerate(parsed.items()):
        color = f"C{k % 10}"
        label = name
        eer = _eer_point(fpr, tpr) if mark_eer else None
        if eer is not None:
            label = f"{name} (EER {eer:.2%})"
        # FAR = 0 has no place on a log axis: mask those points (the curve enters at the first false accept).
        x = np.where(fpr > 0, fpr, np.nan)
        ax.plot(x, tpr, color=color, linewidth=1.6, label=label, gid=f"roc:{name}")
        ymin = min(ymin, float(tpr[fpr > 0].min()))
        if eer is not None and eer >= left:
            ax.plot([eer], [1.0 - eer], linestyle="none", marker="D", markersize=6, markerfacecolor="white",
                    markeredgecolor=color, markeredgewidth=1.5, zorder=4, gid=f"eer:{name}")
            ymin = min(ymin, 1.0 - eer)
        shown = [f for f in fars if f >= min_far * (1 - 1e-9)]
        if shown:
            tars = [_tar_at(fpr, tpr, f) for f in shown]
            ax.plot(shown, tars, linestyle="none", marker="o", markersize=5, color=color, zorder=4,
                    gid=f"tar_at_far:{name}")
            for f, t in zip(shown, tars, strict=True):
                ax.annotate(f"{t:.1%}", (f, t), xytext=(4, -10), textcoords="offset points", fontsize=7,
                            color=color)
            ymin = min(ymin, *tars)
    for f in fars:
        if f >= left * (1 - 1e-9):
            ax.axvline(f, color="0.6", linewidth=0.8, linestyle=":", zorder=1)

    ax.set_xlim(left, 1.0)
    # Readable TAR range: a little below the lowest visible point, rounded down to 5 %.
    ax.set_ylim(max(0.0, math.floor((ymin - 0.02) * 20) / 20), 1.005)
    _percent_axis(ax.yaxis)
    ax.set_xlabel("False accept rate (FAR)")
    ax.set_ylabel("True accept rate (TAR)")
    ax.grid(True, which="major", alpha=0.5)
    ax.grid(True, which="minor", axis="x", alpha=0.15)
    if title:
        ax.set_title(title)
    # Log-FAR ROCs rise to the top right; the bottom right is below every curve.
    handles, labels = ax.get_legend_handles_labels()
    from matplotlib.lines import Line2D

    if fars and any(ln.get_gid() and ln.get_gid().startswith("tar_at_far:") for ln in ax.lines):
        handles.append(Line2D([], [], linestyle="none", marker="o", color="0.3", markersize=5))
        labels.append("TAR @ FAR (dotted lines)")
    if any(ln.get_gid() and ln.get_gid().startswith("eer:") for ln in ax.lines):
        handles.append(Line2D([], [], linestyle="none", marker="D", markerfacecolor="white",
                              markeredgecolor="0.3", markersize=6))
        labels.append("EER (FAR = 1 - TAR)")
    ax.legend(handles, labels, loc="lower right", fontsize=8, framealpha=0.9)
    return fig


def plot_roc(path, curves: Mapping, fars_marked: Sequence[float] | None = None, title: str | None = None,
             mark_eer: bool = True, dpi: int = DEFAULT_DPI) -> str:
    """Writes a log-FAR ROC plot of ``curves`` to ``path`` (PNG, atomic); returns ``path``.

    Example::

        plot_roc("roc.png", {"IResNet-50": roc_from_scores(scores, issame)}, fars_marked=(1e-4, 1e-3))

    See :func:`roc_figure` for the arguments (the x axis starts at ``1 / num_negatives``, the smallest
    measurable FAR) and :func:`save_figure` for the write.
    """
    return save_figure(roc_figure(curves, fars_marked=fars_marked, title=title, mark_eer=mark_eer), path, dpi)


# ----------------------------------------------------------------------------------- score histogram


def score_histogram_figure(scores, issame, thresholds: Mapping[str, float] | None = None, title: str | None = None,
                           bins: int | Sequence[float] = 50, log: bool = False):
    """Overlaid genuine (same) and impostor (different) score histograms; returns the Figure.

    Each class is normalised to unit area (density), so the two shapes are comparable however unbalanced
    the counts; the counts are in the legend.  Both classes share the same bin edges.  A single class
    is allowed (its histogram alone is drawn).

    Args:
        scores: similarity per pair, shape (P,).
        issame: bool (or 0/1) per pair, shape (P,).
        thresholds: ``{label: threshold}`` drawn as vertical lines, e.g.
            ``{"k-fold mean": 0.31, "FAR=1e-3": 0.42}``; the x range is widened to include them.
        title: optional axes title.
        bins: number of equal-width bins over the score range, or explicit bin edges.
        log: log-scale density axis, to see the tails where low-FAR thresholds sit.

    Raises:
        ValueError: on empty or mismatched inputs, non-finite scores or thresholds, labels other than
            bool/0/1, or bad ``bins``.
    """
    scores, labels = _check_inputs(scores, issame)
    thresholds = dict(thresholds or {})
    for name, t in thresholds.items():
        if not isinstance(t, (int, float, np.floating, np.integer)) or not math.isfinite(float(t)):
            raise ValueError(f"threshold {name!r} must be a finite number, got {t!r}")
    if isinstance(bins, (int, np.integer)):
        if bins < 1:
            raise ValueError(f"bins must be >= 1, got {bins}")
        lo, hi = float(scores.min()), float(scores.max())
        if lo == hi:  # all scores equal: one bin around them
            lo, hi = lo - 0.5, hi + 0.5
        edges = np.linspace(lo, hi, int(bins) + 1)
    else:
        edges = np.asarray(bins, dtype=np.float64).reshape(-1)
        if edges.size < 2 or not np.all(np.isfinite(edges)) or np.any(np.diff(edges) <= 0):
            raise ValueError("bins must be a positive int or >= 2 finite, strictly increasing bin edges")

    fig, ax = _new_axes()
    for mask, name, color in ((labels, "same (genuine)", _GENUINE_COLOR),
                              (~labels, "different (impostor)", _IMPOSTOR_COLOR)):
        n = int(np.sum(mask))
        if n == 0:
            continue
        ax.hist(scores[mask], bins=edges, density=True, histtype="stepfilled", alpha=0.35, color=color,
                log=log)
        ax.hist(scores[mask], bins=edges, density=True, histtype="step", linewidth=1.4, color=color,
                label=f"{name}, n={n:,}", log=log)
    for k, (name, t) in enumerate(thresholds.items()):
        ax.axvline(float(t), color=_LINE_COLORS[k % len(_LINE_COLORS)],
                   linestyle=_LINE_STYLES[k % len(_LINE_STYLES)], linewidth=1.5, label=f"{name} = {float(t):.4g}",
                   gid=f"threshold:{name}")
    x_lo = min([float(edges[0])] + [float(t) for t in thresholds.values()])
    x_hi = max([float(edges[-1])] + [float(t) for t in thresholds.values()])
    pad = 0.02 * (x_hi - x_lo)
    ax.set_xlim(x_lo - pad, x_hi + pad)
    ax.set_xlabel("Similarity score")
    ax.set_ylabel("Density (log)" if log else "Density")
    ax.grid(True, alpha=0.3)
    if title:
        ax.set_title(title)
    ax.legend(loc="best", fontsize=8, framealpha=0.9)
    return fig


def plot_score_histogram(path, scores, issame, thresholds: Mapping[str, float] | None = None,
                         title: str | None = None, bins: int | Sequence[float] = 50, log: bool = False,
                         dpi: int = DEFAULT_DPI) -> str:
    """Writes the genuine/impostor score histogram to ``path`` (PNG, atomic); returns ``path``.

    Example::

        report = verification_report(scores, issame)
        plot_score_histogram("scores.png", scores, issame, thresholds={
            "EER": report["eer_threshold"], "FAR=1e-3": report["tar_at_far_thresholds"]["0.001"]})

    See :func:`score_histogram_figure` for the arguments.
    """
    fig = score_histogram_figure(scores, issame, thresholds=thresholds, title=title, bins=bins, log=log)
    return save_figure(fig, path, dpi)
