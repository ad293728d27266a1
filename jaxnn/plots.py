"""Plots (matplotlib, Agg backend: files only, no screen needed).

Each function takes plain numbers, writes one PNG atomically (temporary file, then rename) and
returns its path; none of them shows a window.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["learning_curves", "curves_by_name", "histogram_grid", "scatter_by_param", "bars"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _integer_ticks(axis) -> None:
    """Ticks only at whole numbers (epochs): no 0.5 epoch on a short run's x-axis, and a single
    epoch still gets its one tick (``min_n_ticks=1``: matplotlib's default of 2 falls back to
    fractional ticks when the view holds one whole number)."""
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


def _save(fig, path) -> str:
    path = os.fspath(path)
    tmp = f"{path}.tmp.png"
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    os.replace(tmp, path)
    return path


def learning_curves(records: Sequence[Mapping], path, *, title: str = "", note: str = "") -> str:
    """Loss (left) and accuracy (right) per epoch, train and validation, from ``metrics.jsonl``
    records (``epoch``, ``train_loss``, ``val_loss``, ``train_acc``, ``val_acc``). ``note`` (e.g.
    why the run stopped) is written under the title; with no records the panels say so, so a run
    that diverged in its first epoch still gets a plot that explains itself."""
    plt = _pyplot()
    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(10, 3.8))
    if not records:
        for ax in (ax_l, ax_a):
            ax.text(0.5, 0.5, "no healthy epoch to plot", ha="center", va="center",
                    transform=ax.transAxes, color="0.4")
            ax.set_xticks([])
            ax.set_yticks([])
    if note:
        fig.text(0.5, -0.02, note, ha="center", va="top", fontsize=9, wrap=True)
    ep = [r["epoch"] for r in records]
    for key, label in (("train_loss", "train"), ("val_loss", "val")):
        ax_l.plot(ep, [r[key] for r in records], marker=".", label=label)
    for key, label in (("train_acc", "train"), ("val_acc", "val")):
        ax_a.plot(ep, [r[key] for r in records], marker=".", label=label)
    ax_l.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_a.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (ax_l, ax_a):
        ax.grid(alpha=0.3)
        if records:
            _integer_ticks(ax.xaxis)
            ax.legend()
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def curves_by_name(curves: Mapping[str, Sequence[float]], path, *, ylabel: str,
                   title: str = "", logy: bool = False) -> str:
    """One line per named curve against epoch (e.g. validation accuracy per activation)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, ys in curves.items():
        ax.plot(np.arange(1, len(ys) + 1), ys, marker=".", label=name)
    ax.set(xlabel="epoch", ylabel=ylabel, title=title)
    _integer_ticks(ax.xaxis)
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def histogram_grid(rows: Mapping[str, Sequence[np.ndarray]], path, *, bins: int = 50,
                   title: str = "", share_x: bool = True) -> str:
    """A grid of histograms: one row per named configuration, one panel per layer, mean and std
    in each panel's title. With ``share_x`` the panels of a row share one x-range (the row's
    overall min and max), so a distribution that collapses or spreads layer by layer shows."""
    plt = _pyplot()
    names = list(rows)
    ncols = max(len(v) for v in rows.values())
    fig, axes = plt.subplots(len(names), ncols, figsize=(1.9 * ncols, 1.6 * len(names)),
                             squeeze=False)
    for i, name in enumerate(names):
        row = [np.asarray(a, np.float64).ravel() for a in rows[name]]
        lo = min(float(a.min()) for a in row)
        hi = max(float(a.max()) for a in row)
        span = (lo, hi) if hi > lo else (lo - 1.0, hi + 1.0)
        for j in range(ncols):
            ax = axes[i][j]
            if j >= len(row):
                ax.axis("off")
                continue
            h = row[j]
            # np.histogram + stairs: far faster to draw than ax.hist for many panels.
            counts, edges = np.histogram(h, bins=bins, range=span if share_x else None)
            ax.stairs(counts, edges, fill=True, color="C0")
            ax.set_title(f"L{j + 1} m={h.mean():.2g} s={h.std():.2g}", fontsize=7)
            ax.tick_params(labelsize=5)
            ax.set_yticks([])
        axes[i][0].set_ylabel(name, fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def _log_axis(axis, lo: float, hi: float) -> None:
    """Readable ticks on a log axis spanning ``[lo, hi]``: labels at powers of ten when the span
    covers two decades or more, at 1-2-5 steps (or every digit, under half a decade) when it is
    narrower, as short plain numbers; never labels on minor ticks (matplotlib's default on a
    log axis of less than a decade, where they overlap)."""
    from matplotlib.ticker import FuncFormatter, LogFormatterSciNotation, LogLocator, NullFormatter

    decades = float(np.log10(hi / lo)) if lo > 0 and hi > lo else 0.0
    if decades >= 2:
        axis.set_major_locator(LogLocator(base=10, numticks=8))
        axis.set_major_formatter(LogFormatterSciNotation(base=10))
    else:
        subs = (1.0, 2.0, 5.0) if decades >= 0.5 else tuple(range(1, 10))
        axis.set_major_locator(LogLocator(base=10, subs=subs, numticks=12))
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.2g}"))
    axis.set_minor_formatter(NullFormatter())


def scatter_by_param(trials: Sequence[Mapping], params: Sequence[str], path, *,
                     metric: str = "val_acc", log_params: Sequence[str] = (),
                     title: str = "") -> str:
    """``metric`` against each hyperparameter, one panel per parameter (log x-axis for
    ``log_params``, with readable ticks). Trials whose ``metric`` is missing (``None``/NaN, e.g.
    diverged) are left out. Trials that carry a ``stage`` (coarse-to-fine: 1, 2, ...) are
    coloured by stage, with a legend, so the narrowing of the ranges shows; the panel titles
    name the parameter and the best trial is circled."""
    plt = _pyplot()
    shown = [t for t in trials if t.get(metric) is not None and np.isfinite(float(t[metric]))]
    stages = sorted({t["stage"] for t in shown if t.get("stage") is not None})
    cmap = plt.get_cmap("viridis")
    colour = {s: cmap(0.85 * i / max(len(stages) - 1, 1)) for i, s in enumerate(stages)}
    best = max(shown, key=lambda t: float(t[metric])) if shown else None
    fig, axes = plt.subplots(1, len(params), figsize=(4.4 * len(params), 3.8), squeeze=False)
    for ax, name in zip(axes[0], params, strict=True):
        groups = [(f"stage {s}", [t for t in shown if t.get("stage") == s], colour[s])
                  for s in stages] or [(None, shown, "C0")]
        for label, group, c in groups:
            ax.scatter([t["params"][name] for t in group], [t[metric] for t in group], s=22,
                       color=c, alpha=0.85, label=label and f"{label} ({len(group)} trials)")
        if best is not None:
            ax.scatter([best["params"][name]], [best[metric]], s=120, facecolors="none",
                       edgecolors="C3", linewidths=1.5, label="best")
        xs = [float(t["params"][name]) for t in shown]
        if name in log_params:
            ax.set_xscale("log")
            if xs:
                _log_axis(ax.xaxis, min(xs), max(xs))
        ax.set(xlabel=name, ylabel=metric, title=f"{metric} vs {name}")
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(alpha=0.3)
    if stages or best is not None:
        axes[0][-1].legend(fontsize=7, loc="best")
    n_left = len(trials) - len(shown)
    fig.suptitle((title or f"{len(shown)} trials") + (f" ({n_left} without {metric}, not shown)"
                                                      if n_left else ""))
    fig.tight_layout()
    return _save(fig, path)


def bars(labels: Sequence[str], values: Sequence[float], path, *, ylabel: str,
         title: str = "", logy: bool = False) -> str:
    """A horizontal bar chart (e.g. throughput per implementation)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 0.28 * len(labels) + 1.2))
    ax.barh(range(len(labels)), values, color="C0")
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set(xlabel=ylabel, title=title)
    if logy:
        ax.set_xscale("log")
    ax.grid(alpha=0.3, axis="x")
    return _save(fig, path)
