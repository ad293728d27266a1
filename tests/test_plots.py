"""jaxnn.plots: what the figures show (read off the matplotlib figure before it is saved) and that
each writes a PNG."""

import numpy as np
import pytest

from jaxnn import plots


@pytest.fixture
def figures(monkeypatch):
    """Keep each figure a plot function saves (and still write the file)."""
    kept = []
    real_save = plots._save

    def save(fig, path):
        fig.canvas.draw()  # lay the ticks out as in the file
        fig.test_renderer = fig.canvas.get_renderer()
        kept.append(fig)
        return real_save(fig, path)

    monkeypatch.setattr(plots, "_save", save)
    return kept


def _stages(rng):
    """Three coarse-to-fine stages: wide, narrower, narrow (log-uniform samples)."""
    trials = []
    for stage, (lo, hi) in enumerate([(1e-4, 1.0), (1e-2, 2e-1), (3e-2, 6e-2)], start=1):
        for _ in range(8):
            lr = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
            l2 = float(np.exp(rng.uniform(np.log(lo * 1e-2), np.log(hi * 1e-2))))
            trials.append({"params": {"learning_rate": lr, "l2": l2}, "stage": stage,
                           "val_acc": float(rng.uniform(0.5, 0.95))})
    trials.append({"params": {"learning_rate": 5.0, "l2": 1e-3}, "stage": 1, "val_acc": None})
    return trials


def _overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def _visible_labels(ax):
    return [t for t in ax.get_xticklabels() if t.get_text() and t.get_visible()
            and ax.get_xlim()[0] <= t.get_position()[0] <= ax.get_xlim()[1]]


def test_search_scatter_shows_every_stage_in_its_own_colour(tmp_path, figures):
    trials = _stages(np.random.default_rng(0))
    path = plots.scatter_by_param(trials, ["learning_rate", "l2"], tmp_path / "search.png",
                                  log_params=["learning_rate", "l2"], title="coarse-to-fine")
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    (fig,) = figures
    for ax in fig.axes:
        points = [c for c in ax.collections if c.get_label().startswith("stage")]
        assert [c.get_label() for c in points] == [f"stage {s} (8 trials)" for s in (1, 2, 3)]
        colours = {tuple(np.round(c.get_facecolor()[0][:3], 3)) for c in points}
        assert len(colours) == 3
        xs = sorted(x for c in points for x in c.get_offsets()[:, 0])
        expected = sorted(t["params"][ax.get_xlabel()] for t in trials if t["val_acc"] is not None)
        np.testing.assert_allclose(xs, expected)  # every stage's trials, the diverged one left out
        assert ax.get_title() == f"val_acc vs {ax.get_xlabel()}"
    assert "coarse-to-fine" in fig._suptitle.get_text() and "1 without val_acc" in \
        fig._suptitle.get_text()


@pytest.mark.parametrize("lo, hi", [(1e-5, 1e-1), (3e-4, 2e-3), (5e-4, 9e-4), (0.031, 0.058)])
def test_log_ticks_are_readable(tmp_path, figures, lo, hi):
    """Over any span, from four decades to a fraction of one: at least two labelled ticks and no
    two labels overlapping."""
    rng = np.random.default_rng(1)
    xs = np.exp(rng.uniform(np.log(lo), np.log(hi), 12))
    xs[:2] = lo, hi
    trials = [{"params": {"l2": float(x)}, "val_acc": 0.9} for x in xs]
    plots.scatter_by_param(trials, ["l2"], tmp_path / "s.png", log_params=["l2"])
    (ax,) = figures[0].axes
    renderer = figures[0].test_renderer
    labels = _visible_labels(ax)
    assert len(labels) >= 2, [t.get_text() for t in ax.get_xticklabels()]
    boxes = [t.get_window_extent(renderer) for t in labels]
    for i in range(len(boxes) - 1):
        assert not _overlap(boxes[i], boxes[i + 1]), [t.get_text() for t in labels]


def test_learning_curves_without_records_say_why(tmp_path, figures):
    path = plots.learning_curves([], tmp_path / "c.png", title="t",
                                 note="diverged at epoch 1: train loss nan")
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    texts = [t.get_text() for t in figures[0].texts] + \
        [t.get_text() for ax in figures[0].axes for t in ax.texts]
    assert "diverged at epoch 1: train loss nan" in texts
    assert texts.count("no healthy epoch to plot") == 2


def test_learning_curves_plot_the_records(tmp_path, figures):
    records = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e, "train_acc": 1 - 0.1 / e,
                "val_acc": 0.9 - 0.1 / e} for e in (1, 2, 3)]
    plots.learning_curves(records, tmp_path / "c.png")
    loss_ax = figures[0].axes[0]
    lines = {ln.get_label(): ln.get_ydata() for ln in loss_ax.get_lines()}
    np.testing.assert_allclose(lines["train"], [1, 1 / 2, 1 / 3])
    np.testing.assert_allclose(lines["val"], [1.2, 0.6, 0.4])


def _visible_xticks(ax):
    lo, hi = ax.get_xlim()
    return [float(t) for t in ax.get_xticks() if lo <= t <= hi]


@pytest.mark.parametrize("epochs", [1, 2, 3, 5, 40])
def test_epoch_axes_have_integer_ticks(tmp_path, figures, epochs):
    """A short run (diagnose's 2 or 5 epochs) gets ticks at whole epochs only, never 1.5."""
    records = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e, "train_acc": 1 - 0.1 / e,
                "val_acc": 0.9 - 0.1 / e} for e in range(1, epochs + 1)]
    plots.learning_curves(records, tmp_path / "c.png")
    plots.curves_by_name({"relu": [0.5 + 0.01 * e for e in range(epochs)]}, tmp_path / "n.png",
                         ylabel="val_acc")
    axes = [*figures[0].axes, *figures[1].axes]
    assert [ax.get_xlabel() for ax in axes] == ["epoch"] * 3
    for ax in axes:
        ticks = _visible_xticks(ax)
        assert ticks and all(t == int(t) for t in ticks), ticks
        assert any(1 <= t <= epochs for t in ticks), ticks  # the epochs themselves are marked


def test_experiment_panels_have_integer_epoch_ticks(tmp_path, figures):
    """The experiments' line panels (compare, losses): whole epochs on an epoch axis, however
    few; other x-axes (scores) keep matplotlib's ticks."""
    from jaxnn.cli._experiment import line_panels

    line_panels([
        {"title": "val", "xlabel": "epoch", "ylabel": "val_acc",
         "lines": {"relu": ([1], [0.5]), "tanh": ([1], [0.6])}},
        {"title": "val", "xlabel": "epoch", "ylabel": "val_acc",
         "lines": {"relu": ([1, 2], [0.5, 0.7])}},
        {"title": "loss", "xlabel": "correct-class score s_y", "ylabel": "loss",
         "lines": {"hinge": ([0.0, 0.25, 0.5], [1.0, 0.75, 0.5])}},
    ], tmp_path / "p.png")
    assert open(tmp_path / "p.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    one, two, scores = figures[0].axes
    for ax in (one, two):
        ticks = _visible_xticks(ax)
        assert ticks and all(t == int(t) for t in ticks), ticks
    assert any(t != int(t) for t in _visible_xticks(scores))
