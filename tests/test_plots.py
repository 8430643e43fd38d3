"""tfface.eval.plots: PNGs written atomically, log-FAR ROC axis, histogram thresholds, no pyplot, bad inputs."""

import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from tfface.eval import plots  # noqa: E402
from tfface.eval.verification import eer, roc_curve, tar_at_far  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _pairs(n_pos=400, n_neg=2000, seed=0):
    rng = np.random.default_rng(seed)
    scores = np.r_[rng.normal(0.5, 0.15, n_pos), rng.normal(0.05, 0.1, n_neg)]
    issame = np.r_[np.ones(n_pos, bool), np.zeros(n_neg, bool)]
    return scores, issame


def _assert_png(path, dpi=plots.DEFAULT_DPI):
    import matplotlib.image

    with open(path, "rb") as fh:
        assert fh.read(8) == PNG_MAGIC
    img = matplotlib.image.imread(path)
    w, h = plots._FIGSIZE
    assert img.shape[:2] == (round(h * dpi), round(w * dpi))
    colours = np.unique(img.reshape(-1, img.shape[-1]), axis=0)
    assert len(colours) > 10  # drawn, not blank


def _lines(fig, prefix):
    return {ln.get_gid()[len(prefix):]: ln for ln in fig.axes[0].lines if (ln.get_gid() or "").startswith(prefix)}


def test_plot_roc_writes_png(tmp_path):
    scores, issame = _pairs()
    path = str(tmp_path / "sub" / "roc.png")  # missing parent directory is created
    out = plots.plot_roc(path, {"A": plots.roc_from_scores(scores, issame)}, fars_marked=(1e-3, 1e-2), title="t",
                         dpi=60)
    assert out == path
    _assert_png(path, dpi=60)
    assert os.listdir(tmp_path / "sub") == ["roc.png"]  # no temp file left behind


def test_roc_axes_log_far_starting_at_one_false_accept():
    scores, issame = _pairs(n_neg=2000)
    fig = plots.roc_figure({"A": plots.roc_from_scores(scores, issame)})
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    assert ax.get_xlim() == pytest.approx((1 / 2000, 1.0))
    assert ax.get_xlabel() == "False accept rate (FAR)"
    assert ax.get_ylabel() == "True accept rate (TAR)"
    assert ax.get_ylim()[1] >= 1.0
    # The whole exact curve is drawn; the FAR = 0 points are masked (they have no place on a log axis).
    fpr, tpr, _ = roc_curve(scores, issame)
    line = _lines(fig, "roc:")["A"]
    x, y = np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)
    np.testing.assert_array_equal(np.isnan(x), fpr == 0)
    np.testing.assert_array_equal(x[fpr > 0], fpr[fpr > 0])
    np.testing.assert_array_equal(y, tpr)
    assert ax.get_legend() is not None


def test_roc_left_limit_is_smallest_over_curves_and_tuple_curves():
    s1, y1 = _pairs(n_neg=500, seed=1)
    s2, y2 = _pairs(n_neg=4000, seed=2)
    fig = plots.roc_figure({"small": plots.roc_from_scores(s1, y1), "big": roc_curve(s2, y2)})
    # The tuple curve has no pair counts: its smallest positive FAR (1/4000 here, no ties) is used.
    assert fig.axes[0].get_xlim()[0] == pytest.approx(1 / 4000)
    assert set(_lines(fig, "roc:")) == {"small", "big"}


def test_roc_marks_tar_at_far_and_eer_like_verification():
    scores, issame = _pairs(n_neg=2000)
    fars = (1e-4, 1e-3, 1e-2, 1e-1)  # 1e-4 < 1/2000: not measurable, not marked
    fig = plots.roc_figure({"A": plots.roc_from_scores(scores, issame)}, fars_marked=fars)
    marks = _lines(fig, "tar_at_far:")["A"]
    expected = tar_at_far(scores, issame, fars)
    assert list(marks.get_xdata()) == pytest.approx([1e-3, 1e-2, 1e-1])
    assert list(marks.get_ydata()) == pytest.approx([expected[str(f)] for f in (1e-3, 1e-2, 1e-1)])
    e, _ = eer(scores, issame)
    eer_mark = _lines(fig, "eer:")["A"]
    assert eer_mark.get_xdata()[0] == pytest.approx(e)
    assert eer_mark.get_ydata()[0] == pytest.approx(1 - e)
    assert f"EER {e:.2%}" in _lines(fig, "roc:")["A"].get_label()
    assert not _lines(plots.roc_figure({"A": plots.roc_from_scores(scores, issame)}, mark_eer=False), "eer:")


def test_score_histogram_threshold_lines_and_counts(tmp_path):
    scores, issame = _pairs(n_pos=300, n_neg=900)
    thresholds = {"k-fold mean": 0.31, "FAR=1e-3": 0.42, "outside": 2.0}
    fig = plots.score_histogram_figure(scores, issame, thresholds=thresholds, bins=30)
    lines = _lines(fig, "threshold:")
    assert set(lines) == set(thresholds)
    for name, t in thresholds.items():
        assert list(lines[name].get_xdata()) == [t, t]
        assert name in lines[name].get_label()
    ax = fig.axes[0]
    assert ax.get_xlim()[1] > 2.0  # widened to show a threshold outside the score range
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("n=300" in t for t in legend) and any("n=900" in t for t in legend)
    path = plots.plot_score_histogram(str(tmp_path / "h.png"), scores, issame, thresholds=thresholds, dpi=60,
                                      log=True)
    _assert_png(path, dpi=60)


def test_score_histogram_single_class_is_fine(tmp_path):
    scores = np.linspace(0, 1, 50)
    path = plots.plot_score_histogram(str(tmp_path / "h.png"), scores, np.ones(50, bool), dpi=40)
    _assert_png(path, dpi=40)
    # All-equal scores still get a bin.
    plots.score_histogram_figure(np.full(5, 0.3), np.zeros(5, bool))


def test_failed_render_leaves_no_file(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    scores, issame = _pairs()
    path = tmp_path / "roc.png"
    path.write_bytes(b"previous")

    def boom(self, *args, **kwargs):
        raise RuntimeError("render failed")

    monkeypatch.setattr(Figure, "savefig", boom)
    with pytest.raises(RuntimeError, match="render failed"):
        plots.plot_roc(str(path), {"A": plots.roc_from_scores(scores, issame)})
    with pytest.raises(RuntimeError, match="render failed"):
        plots.plot_score_histogram(str(tmp_path / "new.png"), scores, issame)
    assert sorted(os.listdir(tmp_path)) == ["roc.png"]
    assert path.read_bytes() == b"previous"


def test_failed_write_keeps_previous_file(tmp_path, monkeypatch):
    scores, issame = _pairs()
    path = tmp_path / "h.png"
    path.write_bytes(b"previous")
    real_open = os.fdopen

    class Broken:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, data):
            self.fh.write(data[: len(data) // 2])
            raise OSError("disk full")

    monkeypatch.setattr(os, "fdopen", lambda *a, **k: Broken(real_open(*a, **k)))
    with pytest.raises(OSError, match="disk full"):
        plots.plot_score_histogram(str(path), scores, issame)
    assert sorted(os.listdir(tmp_path)) == ["h.png"]
    assert path.read_bytes() == b"previous"


def test_no_pyplot_no_backend_change(tmp_path):
    """Importing the module imports no matplotlib; plotting never imports pyplot nor changes the backend."""
    script = f"""
        import sys
        import numpy as np
        from tfface.eval import plots
        assert "matplotlib" not in sys.modules
        import matplotlib
        # The raw rcParams entry: matplotlib.get_backend() itself would resolve it by importing pyplot.
        raw_backend = lambda: dict.__getitem__(matplotlib.rcParams, "backend")
        backend = raw_backend()
        y = np.r_[np.ones(50, bool), np.zeros(50, bool)]
        s = np.r_[np.linspace(0.3, 1, 50), np.linspace(0, 0.6, 50)]
        plots.plot_roc({str(tmp_path / "r.png")!r}, {{"A": plots.roc_from_scores(s, y)}}, dpi=30)
        plots.plot_score_histogram({str(tmp_path / "h.png")!r}, s, y, thresholds={{"t": 0.5}}, dpi=30)
        assert "matplotlib.pyplot" not in sys.modules
        assert raw_backend() == backend
        print("ok")
    """
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "ok"


def test_plots_from_threads(tmp_path):
    scores, issame = _pairs(n_pos=100, n_neg=300)

    def work(i):
        return plots.plot_score_histogram(str(tmp_path / f"{i}.png"), scores, issame, thresholds={"t": 0.3}, dpi=30)

    with ThreadPoolExecutor(2) as pool:
        paths = list(pool.map(work, range(4)))
    for p in paths:
        _assert_png(p, dpi=30)


def test_missing_matplotlib_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"tfface\[plots\]"):
        plots.roc_figure({"A": ([0, 0.5, 1], [0, 0.8, 1])})


@pytest.mark.parametrize(
    "curves, match",
    [
        ({}, "empty"),
        ([([0, 1], [0, 1])], "mapping"),
        ({"A": ([0, 0.5, 1], [0, 1])}, "differ in length"),
        ({"A": ([], [])}, "empty"),
        ({"A": ([0, 0, 0], [0, 0.5, 1])}, "FAR > 0"),
        ({"A": ([0, 0.5, 2], [0, 0.5, 1])}, r"\[0, 1\]"),
        ({"A": ([0, 0.6, 0.5], [0, 0.5, 1])}, "non-decreasing"),
        ({"A": ([0, np.nan, 1], [0, 0.5, 1])}, "NaN"),
        ({"A": "scores"}, "RocCurve"),
    ],
)
def test_roc_bad_curves(curves, match):
    with pytest.raises(ValueError, match=match):
        plots.roc_figure(curves)


def test_bad_inputs():
    scores, issame = _pairs(n_pos=20, n_neg=20)
    with pytest.raises(ValueError, match="both same and different"):
        plots.roc_from_scores(scores[:20], issame[:20])
    with pytest.raises(ValueError, match="differ in length"):
        plots.roc_from_scores(scores, issame[:-1])
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        plots.roc_figure({"A": plots.roc_from_scores(scores, issame)}, fars_marked=(0.0,))
    with pytest.raises(ValueError, match="empty"):
        plots.score_histogram_figure([], [])
    with pytest.raises(ValueError, match="differ in length"):
        plots.score_histogram_figure(scores, issame[:-1])
    with pytest.raises(ValueError, match="NaN"):
        plots.score_histogram_figure(np.r_[scores[:-1], np.nan], issame)
    with pytest.raises(ValueError, match="finite number"):
        plots.score_histogram_figure(scores, issame, thresholds={"t": float("inf")})
    with pytest.raises(ValueError, match="bins"):
        plots.score_histogram_figure(scores, issame, bins=0)
    with pytest.raises(ValueError, match="bins"):
        plots.score_histogram_figure(scores, issame, bins=[0.5, 0.1])
