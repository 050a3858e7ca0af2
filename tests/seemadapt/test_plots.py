"""seemadapt.plots: PNGs are written, and the figures carry exactly the data they were given."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from seemadapt.metrics import PanopticMetrics, SemanticMetrics
from seemadapt.plots import (
    iou_over_rounds_figure,
    loss_curve_figure,
    per_class_figure,
    plot_iou_over_rounds,
    plot_loss_curve,
    plot_per_class,
)


def _history():
    history = []
    for step in range(0, 100, 10):
        history.append({"step": step, "loss": 4.0 - step / 50, "loss_mask": 1.0 + step / 100, "lr": 1e-4})
        if step % 50 == 0:
            history.append({"step": step, "miou": 0.2 + step / 500})
    return history


def _semantic_results():
    m = SemanticMetrics(4, ["background", "mold", "stain", "pipe"])
    m.update(np.array([[0, 0, 1, 2, 2, 1]]), np.array([[0, 1, 1, 2, 255, 0]]))
    return m.compute()  # pipe appears nowhere: NaN


def _assert_png(path, min_size=(300, 200)):
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width >= min_size[0] and image.height >= min_size[1]
        pixels = np.asarray(image.convert("L"))
    assert pixels.std() > 5  # something was drawn


def test_plot_loss_curve_writes_png(tmp_path):
    path = plot_loss_curve(_history(), tmp_path / "nested" / "loss.png", smoothing=0.5, title="run")
    assert path == tmp_path / "nested" / "loss.png"
    _assert_png(path)


def test_loss_curve_splits_losses_from_metrics_and_skips_lr():
    fig = loss_curve_figure(_history())
    loss_ax, metric_ax = fig.axes[:2]
    lines = {line.get_label(): line for line in loss_ax.get_lines()}
    assert set(lines) == {"loss", "loss_mask"}
    np.testing.assert_allclose(lines["loss"].get_xdata(), np.arange(0, 100, 10))
    np.testing.assert_allclose(lines["loss_mask"].get_ydata(), 1.0 + np.arange(0, 100, 10) / 100)
    (miou,) = metric_ax.get_lines()
    assert miou.get_label() == "miou"
    np.testing.assert_allclose(miou.get_xdata(), [0, 50])  # sparse evaluation records
    np.testing.assert_allclose(miou.get_ydata(), [0.2, 0.3])


def test_loss_curve_smoothing_is_an_ema_over_the_raw_curve():
    history = [{"step": i, "loss": v} for i, v in enumerate([4.0, 0.0, 2.0])]
    fig = loss_curve_figure(history, smoothing=0.5)
    raw, smooth = fig.axes[0].get_lines()
    np.testing.assert_allclose(raw.get_ydata(), [4.0, 0.0, 2.0])
    np.testing.assert_allclose(smooth.get_ydata(), [4.0, 2.0, 2.0])  # 0.5*4+0.5*0, 0.5*2+0.5*2


@pytest.mark.parametrize(
    ("history", "kwargs", "match"),
    [
        ([], {}, "history is empty"),
        ([{"loss": 1.0}], {}, "numeric 'step'"),
        ([{"step": 0, "loss": 1.0}], {"smoothing": 1.0}, "smoothing"),
        ([{"step": 0, "lr": 1.0}], {}, "no numeric values"),
    ],
)
def test_loss_curve_rejects_bad_history(history, kwargs, match):
    with pytest.raises(ValueError, match=match):
        loss_curve_figure(history, **kwargs)


def test_plot_per_class_semantic_bars_match_results(tmp_path):
    results = _semantic_results()
    _assert_png(plot_per_class(results, tmp_path / "per_class.png"))
    fig = per_class_figure(results)
    ax = fig.axes[0]
    heights = np.array([bar.get_height() for bar in ax.patches]).reshape(3, 4)
    for row, values in zip(heights, (results.iou, results.precision, results.recall)):
        np.testing.assert_allclose(row, np.where(np.isnan(values), 0, 100 * values))
    assert [t.get_text() for t in ax.get_xticklabels()] == list(results.class_names)
    assert sum(t.get_text() == "n/a" for t in ax.texts) == 3  # pipe: IoU, precision, recall
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["IoU", "precision", "recall"]


def test_plot_per_class_panoptic_and_mapping(tmp_path):
    cats = [{"id": 1, "name": "cat", "isthing": 1}, {"id": 2, "name": "wall", "isthing": 0}]
    ids = np.array([[1, 1, 2, 2]])
    segs = [{"id": 1, "category_id": 1}, {"id": 2, "category_id": 2}]
    m = PanopticMetrics(cats)
    m.update(ids, segs, ids, segs)
    fig = per_class_figure(m.compute())
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["PQ", "SQ", "RQ"]
    assert [bar.get_height() for bar in fig.axes[0].patches] == [100.0] * 6
    path = plot_per_class({"a": {"dice": 0.5}, "b": {"dice": 0.25}}, tmp_path / "dice.png")
    _assert_png(path)
    with pytest.raises(TypeError):
        per_class_figure([0.5, 0.2])


def test_plot_iou_over_rounds(tmp_path):
    rounds = [{"mold": 0.1, "stain": 0.3}, {"mold": 0.2, "stain": math.nan}, _semantic_results()]
    _assert_png(plot_iou_over_rounds(rounds, tmp_path / "rounds.png"))
    fig = iou_over_rounds_figure(rounds)
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    assert set(lines) == {"mold", "stain", "background", "pipe", "mean (mIoU)"}
    np.testing.assert_allclose(lines["mold"].get_ydata(), [10, 20, 100 * rounds[2].iou[1]])
    np.testing.assert_allclose(lines["mean (mIoU)"].get_ydata(), [20, 20, 100 * rounds[2].miou])
    assert np.isnan(lines["background"].get_ydata()[:2]).all()  # not scored in the first rounds


def test_plot_iou_over_rounds_rejects_percentages():
    with pytest.raises(ValueError, match="divide percentages by 100"):
        iou_over_rounds_figure([{"mold": 45.0}])
    with pytest.raises(ValueError, match="rounds is empty"):
        iou_over_rounds_figure([])


def test_plots_leave_pyplot_alone(tmp_path):
    import matplotlib
    import matplotlib.pyplot as plt

    backend = matplotlib.get_backend()
    plot_loss_curve(_history(), tmp_path / "a.png")
    plot_per_class(_semantic_results(), tmp_path / "b.png")
    assert plt.get_fignums() == []
    assert matplotlib.get_backend() == backend
