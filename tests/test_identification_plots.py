"""tfface.eval.identification_plots: CMC and distractor curves drawn from the identification reports."""

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from test_plots import _assert_png, _lines  # noqa: E402

from tfface.eval import identification_plots as iplots  # noqa: E402


def test_cmc_and_distractor_curves(tmp_path):
    cmc = {"A": [0.9, 0.95, 0.97, 0.99], "B": np.array([0.8, 0.85, 0.9, 0.92])}
    _assert_png(iplots.plot_cmc(str(tmp_path / "cmc.png"), cmc, title="CMC", dpi=40), dpi=40)
    assert set(_lines(iplots.cmc_figure(cmc), "cmc:")) == {"A", "B"}
    counts = [1_000_000, 10, 1000]  # any order: drawn sorted
    fig = iplots.distractor_figure(counts, [0.9, 0.99, 0.97])
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    line = _lines(fig, "distractors:")[""]
    assert list(line.get_xdata()) == [10, 1000, 1_000_000]
    assert list(line.get_ydata()) == [0.99, 0.97, 0.9]
    path = iplots.plot_distractor_curve(str(tmp_path / "mf.png"), counts, {"A": [0.9, 0.99, 0.97]}, dpi=40)
    _assert_png(path, dpi=40)
    # The {str(count): rate} mapping of identification.distractor_curve's report, alone or per model.
    report = {"counts": [10, 100], "rank1": {"10": 0.99, "100": 0.95}}
    for rank1 in (report["rank1"], {"A": report["rank1"], "B": {"100": 0.9, "10": 0.97}}):
        fig = iplots.distractor_figure(report["counts"], rank1)
        ys = {name: list(ln.get_ydata()) for name, ln in _lines(fig, "distractors:").items()}
        assert ys[next(iter(ys))] == [0.99, 0.95]
    assert ys["B"] == [0.97, 0.9]
    with pytest.raises(ValueError, match="no rate for distractor count"):
        iplots.distractor_figure([10, 1000], report["rank1"])


def test_bad_inputs():
    with pytest.raises(ValueError, match="cumulative"):
        iplots.cmc_figure([0.9, 0.05, 0.03])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        iplots.cmc_figure({"A": [90.0, 95.0]})  # percentages instead of fractions
    with pytest.raises(ValueError, match="nothing to plot"):
        iplots.cmc_figure({})
    with pytest.raises(ValueError, match="> 0"):
        iplots.distractor_figure([0, 10], [1.0, 0.9])
    with pytest.raises(ValueError, match="distractor counts"):
        iplots.distractor_figure([10, 100], {"A": [0.9]})
