"""The babysitting report: one self-contained HTML page a person opens in a browser.

The curriculum's babysitting is visual: learning curves (learning rate too high or too low, the
train/val gap), per-layer activation histograms, update/weight ratios, dead units, the
initial-loss check. :func:`write_report` gathers them for a run directory into
``RUN_DIR/report.html`` (:func:`report_html` returns the page as a string)::

    jaxnn.report.write_report("runs/exp1")      # -> "runs/exp1/report.html"

It reads the four kinds of directory jaxnn writes (:func:`run_kind`):

- **train** (``config.json``, ``metrics.jsonl``, checkpoints): the command and config, the
  learning curves with :func:`jaxnn.diagnostics.diagnose`'s verdicts drawn on them (the epoch the
  validation loss starts rising, the initial loss against :math:`\\log C`), and per-layer
  statistics of the trained model (:func:`jaxnn.load_run`, a probe batch of the run's
  validation split through :func:`jaxnn.diagnostics.layer_stats`): a table, activation
  histograms, the update/weight ratio of one optimizer step (from the checkpoint's optimizer
  state) against the :math:`10^{-3}` rule of thumb, dead and saturated fractions.
- **diagnose** (``diagnosis.json``): the same from what ``jaxnn diagnose`` saved (its initial-loss
  and overfit checks, curves, verdicts, layer table; no histograms: it keeps no model).
- **search** (``results.json``, ``study.db``): the trials (``search.png``, a table), the best
  trial's ``jaxnn train`` command and each hyperparameter's importance
  (:func:`optuna.importance.get_param_importances` on the study; a note when it cannot be
  computed, e.g. too few finished trials).
- **ensemble** (``summary.json``): each member's test accuracy against the ensemble's.

The page makes no network request: images are PNG ``data:`` URIs, the style is inline, there is
no script, and a Content-Security-Policy forbids anything else. Every string from the run
(config values, paths, commands) is HTML-escaped. The file is written atomically.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import math
import os
import shlex
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from jaxnn import rundir as _rundir

__all__ = [
    "REPORT_FILE",
    "KINDS",
    "UPDATE_RATIO_HEALTHY",
    "PROBE_EXAMPLES",
    "run_kind",
    "report_html",
    "write_report",
]

#: The file :func:`write_report` writes into the run directory.
REPORT_FILE = "report.html"
#: The kinds of directory a report is made of.
KINDS = ("train", "diagnose", "search", "ensemble")
#: The update/weight ratio rule of thumb: about 1e-3 per step is healthy.
UPDATE_RATIO_HEALTHY = 1e-3
#: Ratios more than this factor away from :data:`UPDATE_RATIO_HEALTHY` are flagged.
_RATIO_FACTOR = 10.0
#: Validation examples in the probe batch of a train run's layer statistics.
PROBE_EXAMPLES = 256
#: Dead or saturated fractions above this are flagged (``diagnose``'s dead-unit threshold).
_FLAG_FRACTION = 0.3
#: Trials shown in a search's table.
_TRIALS_SHOWN = 15

#: What to try, per verdict of :func:`jaxnn.diagnostics.diagnose`.
_ADVICE = {
    "learning rate too high": "lower the learning rate (3-10x)",
    "learning rate too low": "raise the learning rate (3-10x)",
}


# --------------------------------------------------------------------------- kinds
def _marker_verb(path: str) -> str | None:
    try:
        marker = _rundir.read_json(os.path.join(path, ".jaxnn-run"))
    except (_rundir.RunDirError, OSError):
        return None
    verb = marker.get("verb")
    return verb if isinstance(verb, str) else None


def _has(path: str, name: str) -> bool:
    return os.path.exists(os.path.join(path, name))


def _looks_like(path: str, kind: str) -> bool:
    if kind == "diagnose":
        return _has(path, "diagnosis.json")
    if kind == "search":
        return _has(path, "results.json") or _has(path, "study.db")
    if kind == "ensemble":
        if not _has(path, "summary.json") or _has(path, "config.json"):
            return False
        try:
            return "ensemble_test_acc" in _rundir.read_json(os.path.join(path, "summary.json"))
        except _rundir.RunDirError:
            return False
    return _has(path, "config.json") and (_has(path, "metrics.jsonl")
                                           or _has(path, "checkpoints"))


def run_kind(path: str | os.PathLike) -> str:
    """Which of :data:`KINDS` the directory ``path`` is: its jaxnn marker's verb when it has one,
    else what it holds (``diagnosis.json``: diagnose; ``results.json`` or ``study.db``: search; a
    ``summary.json`` of an ensemble; ``config.json`` with metrics or checkpoints: train).

    Raises:
      jaxnn.rundir.RunDirError: (a ``ValueError``) for anything else, in one line.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise _rundir.RunDirError(f"{path}: no such directory")
    verb = _marker_verb(path)
    if verb is not None and verb not in KINDS:
        raise _rundir.RunDirError(f"{path} is a jaxnn {verb} directory; a report is made of a "
                                  f"{', '.join(KINDS[:-1])} or {KINDS[-1]} directory")
    for kind in ((verb,) if verb else ("diagnose", "search", "ensemble", "train")):
        if _looks_like(path, kind):
            return kind
    if verb:
        raise _rundir.RunDirError(f"{path}: a jaxnn {verb} directory with nothing to report yet")
    raise _rundir.RunDirError(
        f"{path} is not a jaxnn train, diagnose, search or ensemble directory (it holds none of "
        "config.json with metrics.jsonl, diagnosis.json, results.json, an ensemble's "
        "summary.json)")


# --------------------------------------------------------------------------- HTML pieces
def _e(value: Any) -> str:
    """``value`` as text, HTML-escaped (quotes too: safe in attributes)."""
    return html.escape(str(value), quote=True)


def _num(v: Any, fmt: str = ".4g") -> str:
    """A number for a table cell: ``-`` for None/NaN."""
    if v is None:
        return "-"
    if isinstance(v, bool) or not isinstance(v, int | float | np.floating | np.integer):
        return _e(v)
    v = float(v)
    return "-" if math.isnan(v) else format(v, fmt)


def _cell(v: Any, fmt: str = ".4g", cls: str = "") -> str:
    """A ``<td>``; numbers carry their full value in ``data-value``."""
    attrs = f' class="{cls}"' if cls else ""
    if isinstance(v, int | float | np.floating | np.integer) and not isinstance(v, bool):
        attrs += f' data-value="{_e(repr(float(v)))}"'
        return f"<td{attrs}>{_num(v, fmt)}</td>"
    return f"<td{attrs}>{_e('-' if v is None else v)}</td>"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, cls: str = "",
           row_attrs: Sequence[str] | None = None) -> str:
    """A table of ``rows`` (each a list of ready ``<td>`` strings)."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join(f"<tr{(' ' + row_attrs[i]) if row_attrs else ''}>{''.join(r)}</tr>"
                   for i, r in enumerate(rows))
    c = f' class="{cls}"' if cls else ""
    return f"<table{c}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _kv_table(items: Mapping[str, Any], *, cls: str = "config") -> str:
    rows = [[f"<th scope=\"row\">{_e(k)}</th>", _cell(v)] for k, v in items.items()]
    body = "".join(f"<tr>{''.join(r)}</tr>" for r in rows)
    return f'<table class="{cls}"><tbody>{body}</tbody></table>'


def _img(uri: str | None, alt: str) -> str:
    if uri is None:
        return ""
    return f'<figure><img src="{uri}" alt="{_e(alt)}"></figure>'


def _section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{_e(title)}</h2>\n{body}\n</section>\n'


def _p(text: str, cls: str = "") -> str:
    c = f' class="{cls}"' if cls else ""
    return f"<p{c}>{text}</p>"


def _pre(text: str) -> str:
    return f"<pre>{_e(text)}</pre>"


_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
 max-width:1100px;margin:0 auto;padding:1em 1.5em 3em;color:#1d1d1f;line-height:1.45}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.2em;border-bottom:1px solid #ddd;
 padding-bottom:.2em;margin-top:1.8em}
.meta{color:#666;font-size:.9em;margin-top:0}
nav{font-size:.9em;margin:.6em 0 1em}nav a{margin-right:1em;color:#0b5cad;text-decoration:none}
pre{background:#f5f5f7;padding:.6em .8em;overflow-x:auto;white-space:pre-wrap;
 word-break:break-all;border-radius:4px;font-size:.85em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
th,td{border:1px solid #ddd;padding:.25em .55em;text-align:right}
th{background:#f5f5f7}td:first-child,th[scope=row]{text-align:left}
table.config td{text-align:left}
.bad{background:#fde8e8}.warn{background:#fff4d6}.good{background:#e6f4ea}
ul.verdicts{list-style:none;padding:0}ul.verdicts li{padding:.5em .8em;margin:.35em 0;
 border-radius:4px;border-left:4px solid #c62828;background:#fde8e8}
ul.verdicts li.good{border-left-color:#2e7d32;background:#e6f4ea}
.note{color:#555;font-size:.9em}
figure{margin:.6em 0}img{max-width:100%;height:auto}
footer{margin-top:3em;color:#888;font-size:.8em}
"""
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def _page(title: str, subtitle: str, sections: Sequence[tuple[str, str, str]]) -> str:
    from jaxnn import __version__

    nav = "".join(f'<a href="#{sid}">{_e(t)}</a>' for sid, t, _ in sections)
    body = "".join(_section(sid, t, b) for sid, t, b in sections)
    when = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        f"<header><h1>{_e(title)}</h1>\n<p class=\"meta\">{subtitle}</p></header>\n"
        f"<nav>{nav}</nav>\n{body}"
        f"<footer>Written by jaxnn {_e(__version__)} on {_e(when)} (<code>jaxnn report</code>). "
        "Self-contained: no network request, images inline.</footer>\n</body>\n</html>\n")


# --------------------------------------------------------------------------- figures
def _mpl(text: Any) -> str:
    """A user string as matplotlib text: literal ``$`` (no mathtext)."""
    return str(text).replace("$", r"\$")


def _figure(width: float, height: float):
    """A matplotlib Figure of its own (no pyplot, no global backend switch)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _uri(fig) -> str:
    """The figure as a ``data:image/png;base64,...`` URI."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _png_file_uri(path: str) -> str | None:
    """A PNG file of the run directory as a data URI (``None`` if unreadable or not a PNG)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return None
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _curves_figure(records: Sequence[Mapping], *, initial_loss: float | None,
                   expected: float | None, onset: int | None, title: str) -> str:
    fig = _figure(10, 3.8)
    ax_l, ax_a = fig.subplots(1, 2)
    ep = [r.get("epoch") for r in records]
    if not records:
        for ax in (ax_l, ax_a):
            ax.text(0.5, 0.5, "no healthy epoch to plot", ha="center", va="center",
                    transform=ax.transAxes, color="0.4")
    for key, label, c in (("train_loss", "train", "C0"), ("val_loss", "val", "C1")):
        ys = [r.get(key, math.nan) for r in records]
        xs = ep
        if key == "train_loss" and initial_loss is not None and np.isfinite(initial_loss):
            xs, ys = [0, *ep], [initial_loss, *ys]  # epoch 0: the loss at initialization
        if xs:
            ax_l.plot(xs, ys, marker=".", label=label, color=c)
    if expected is not None and np.isfinite(expected):
        ax_l.axhline(expected, color="0.5", ls=":", lw=1,
                     label=f"expected at init {expected:.3g}")
    for key, label, c in (("train_acc", "train", "C0"), ("val_acc", "val", "C1")):
        if records:
            ax_a.plot(ep, [r.get(key, math.nan) for r in records], marker=".", label=label,
                      color=c)
    if onset is not None:
        for ax in (ax_l, ax_a):
            ax.axvline(onset, color="C3", ls="--", lw=1.2)
        ax_l.annotate(f"val loss rises from epoch {onset}", xy=(onset, 0.97),
                      xycoords=("data", "axes fraction"), xytext=(4, 0),
                      textcoords="offset points", va="top", fontsize=8, color="C3")
    losses = [v for r in records for k in ("train_loss", "val_loss")
              if isinstance(v := r.get(k), int | float) and np.isfinite(v) and v > 0]
    if losses and max(losses) > 20 * min(losses):  # small and large losses both readable
        ax_l.set_yscale("log")
    ax_l.set(xlabel="epoch (0: at initialization)", ylabel="loss", title="loss")
    ax_a.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_l, ax_a):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if records:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(_mpl(title))
    return _uri(fig)


def _histograms_figure(layers) -> str:
    """One panel per layer: the activations (filled) and pre-activations (outline)."""
    n = len(layers)
    ncols = min(n, 4)
    nrows = math.ceil(n / ncols)
    fig = _figure(3.0 * ncols, 2.3 * nrows)
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    for ax, (s, act, pre) in zip(axes, layers, strict=False):
        h = np.asarray(s.activations, np.float64).ravel()
        h = h[np.isfinite(h)]
        if pre is not None:
            p = np.asarray(pre, np.float64).ravel()
            p = p[np.isfinite(p)]
        else:
            p = np.zeros(0)
        both = np.concatenate([h, p]) if p.size else h
        if both.size:
            lo, hi = float(both.min()), float(both.max())
            span = (lo, hi) if hi > lo else (lo - 1.0, hi + 1.0)
            counts, edges = np.histogram(h, bins=50, range=span)
            ax.stairs(counts, edges, fill=True, color="C0", alpha=0.8, label="activations")
            if p.size:
                counts, edges = np.histogram(p, bins=50, range=span)
                ax.stairs(counts, edges, color="C1", lw=1, label="pre-activations")
        ax.set_title(_mpl(f"{s.name} ({act or 'scores'})"), fontsize=9)
        ax.text(0.98, 0.95, f"mean {s.mean:.2g}\nstd {s.std:.2g}\ndead {100 * s.dead:.0f}%"
                            f"\nsat. {100 * s.saturated:.0f}%", transform=ax.transAxes,
                ha="right", va="top", fontsize=7, color="0.25")
        ax.tick_params(labelsize=7)
        ax.set_yticks([])
    if n:
        axes[0].legend(fontsize=6, loc="upper left")
    for ax in axes[n:]:
        ax.axis("off")
    fig.tight_layout()
    return _uri(fig)


def _ratio_figure(names: Sequence[str], ratios: Sequence[float]) -> str:
    fig = _figure(7, 0.45 * len(names) + 1.3)
    ax = fig.subplots()
    r = np.asarray(ratios, np.float64)
    ok = np.isfinite(r) & (r > 0)
    colors = ["C2" if (UPDATE_RATIO_HEALTHY / _RATIO_FACTOR <= v
                       <= UPDATE_RATIO_HEALTHY * _RATIO_FACTOR) else "C3" for v in r]
    ax.barh(np.arange(len(names))[ok], r[ok], color=np.asarray(colors)[ok])
    ax.set_yticks(range(len(names)), [_mpl(n) for n in names], fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.axvline(UPDATE_RATIO_HEALTHY, color="k", ls="--", lw=1, label="1e-3 rule of thumb")
    ax.axvspan(UPDATE_RATIO_HEALTHY / _RATIO_FACTOR, UPDATE_RATIO_HEALTHY * _RATIO_FACTOR,
               color="C2", alpha=0.08)
    lo = min([UPDATE_RATIO_HEALTHY / 100, *r[ok]])
    hi = max([UPDATE_RATIO_HEALTHY * 100, *r[ok]])
    ax.set_xlim(lo / 2, hi * 2)
    ax.set(xlabel="||update|| / ||W|| of one optimizer step", title="update/weight ratio")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3, axis="x")
    return _uri(fig)


def _importance_figure(importances: Mapping[str, float]) -> str:
    names = list(importances)
    fig = _figure(6, 0.45 * len(names) + 1.2)
    ax = fig.subplots()
    ax.barh(range(len(names)), [importances[n] for n in names], color="C0")
    ax.set_yticks(range(len(names)), [_mpl(n) for n in names], fontsize=8)
    ax.invert_yaxis()
    ax.set(xlabel="importance (fANOVA, share of the objective's variance)",
           title="hyperparameter importance")
    ax.grid(alpha=0.3, axis="x")
    return _uri(fig)


def _trials_figure(trials: Sequence[Mapping]) -> str | None:
    """Validation accuracy per trial number (when the search wrote no search.png)."""
    shown = [t for t in trials if t.get("val_acc") is not None]
    if not shown:
        return None
    fig = _figure(7, 3.4)
    ax = fig.subplots()
    ax.scatter([t.get("number", i) for i, t in enumerate(shown)],
               [t["val_acc"] for t in shown], s=20)
    ax.set(xlabel="trial", ylabel="val_acc", title="validation accuracy per trial")
    ax.grid(alpha=0.3)
    return _uri(fig)


# --------------------------------------------------------------------------- shared sections
def _verdict_items(verdicts: Sequence[str], reasons: Sequence[str]) -> str:
    """The verdicts as sentences: "REASON: VERDICT; ADVICE."."""
    if not verdicts:
        return ('<ul class="verdicts"><li class="good">No problem found: the loss goes down, '
                "training and validation agree, the units are alive.</li></ul>")
    items = []
    for v, r in zip(verdicts, reasons, strict=True):
        head, _, advice = v.partition(":")
        advice = advice.strip() or _ADVICE.get(v, "")
        sentence = f"{_e(r)}: <b>{_e(head)}</b>" if r else f"<b>{_e(head)}</b>"
        items.append(f"<li>{sentence}{'; ' + _e(advice) if advice else ''}.</li>")
    return '<ul class="verdicts">' + "".join(items) + "</ul>"


_DEFAULTS_CACHE: dict[str, Any] = {}


def _config_defaults() -> dict[str, Any]:
    if not _DEFAULTS_CACHE:
        from jaxnn.config import RunConfig

        _DEFAULTS_CACHE.update(RunConfig().to_dict())
    return _DEFAULTS_CACHE


def _flag_args(config: Mapping[str, Any], keys: Sequence[str], *,
               always: Sequence[str] = ()) -> list[str]:
    """``--flag value`` for each of ``keys`` in ``config`` that is set and differs from
    :class:`jaxnn.config.RunConfig`'s default (``always``: shown anyway)."""
    defaults = _config_defaults()
    argv = []
    for k in keys:
        v = config.get(k)
        if v is None or v is False:
            continue
        if k not in always and k in defaults and defaults[k] == v:
            continue
        flag = "--" + k.replace("_", "-")
        argv += [flag] if v is True else [flag, repr(v) if isinstance(v, float) else str(v)]
    return argv


#: Config keys that are no flag of the verbs (``split_seed`` is fixed).
_NOT_FLAGS = ("split_seed",)


def _command(verb: str, config: Mapping[str, Any], path: str, *, extra: Sequence[str] = ()):
    keys = [k for k in config if k not in _NOT_FLAGS]
    argv = ["jaxnn", *verb.split(), *_flag_args(config, keys, always=("epochs", "lr")),
            *extra, "--out", path]
    return shlex.join(argv)


def _config_section(verb: str, config: Mapping[str, Any], path: str, *, note: str = "",
                    extra: Sequence[str] = ()) -> tuple[str, str, str]:
    body = (_p("The command that makes this run again (flags that differ from the defaults):")
            + _pre(_command(verb, config, path, extra=extra))
            + (_p(note, "note") if note else "")
            + "<details><summary>every setting</summary>" + _kv_table(config)
            + "</details>")
    return ("command", "Command and config", body)


def _expected_initial_loss(loss_name: str, num_classes: int) -> float | None:
    from jaxnn import diagnostics

    try:
        return diagnostics._expected_initial_loss(loss_name, int(num_classes))
    except (ValueError, TypeError, KeyError):
        return None


def _initial_loss_sentence(expected: float | None, measured: float | None, *,
                           num_classes: int | None, what: str) -> str:
    if expected is None or measured is None or not np.isfinite(measured):
        return _p("The initial loss was not recorded (the run has not finished).", "note")
    if not num_classes and 0 < expected < 20:  # softmax's log C says its C
        num_classes = round(math.exp(expected))
    log_c = (f" = log({num_classes})" if num_classes and
             abs(expected - math.log(num_classes)) < 1e-5 else "")
    rel = (measured - expected) / abs(expected) if expected else math.nan
    if abs(rel) <= 0.05:
        cls, verdict = "good", "within 5%: the scores start near zero, as they should"
    elif rel > 0:
        cls, verdict = "warn", (f"{100 * rel:.0f}% above: the initial scores are not small "
                                "(large initial weights or init scale); harmless if the loss "
                                "falls fast, but `jaxnn diagnose` runs the small-weights check")
    else:
        cls, verdict = "bad", (f"{100 * -rel:.0f}% below: a loss cannot start below chance "
                               "level; look for a bug in the loss or the labels")
    rows = [[_cell("expected (small weights, no regularization)"), _cell(expected)],
            [_cell(what), _cell(measured, cls=cls)]]
    return (_table(["", "loss"], rows, cls="initial")
            + _p(f"Expected {expected:.4g}{_e(log_c)}; measured {measured:.4g}: "
                 f"{_e(verdict)}."))


def _ratio_word(r: float) -> tuple[str, str]:
    if not np.isfinite(r):
        return "-", ""
    if r > UPDATE_RATIO_HEALTHY * _RATIO_FACTOR:
        return f"{r / UPDATE_RATIO_HEALTHY:.3g}x: high (learning rate too high?)", "bad"
    if r < UPDATE_RATIO_HEALTHY / _RATIO_FACTOR:
        return f"{r / UPDATE_RATIO_HEALTHY:.3g}x: low (learning rate too low?)", "bad"
    return f"{r / UPDATE_RATIO_HEALTHY:.3g}x: ok", "good"


_LAYER_HEADERS = ["layer", "activation", "units", "pre mean", "pre std", "mean", "std",
                  "saturated", "dead", "grad norm", "update/weight", "vs 1e-3"]


def _layers_table(stats: Sequence[Mapping], acts: Sequence[str | None],
                  units: Sequence[int | None]) -> str:
    rows, attrs = [], []
    for s, act, u in zip(stats, acts, units, strict=True):
        word, cls = _ratio_word(float(s.get("update_ratio", math.nan)
                                      if s.get("update_ratio") is not None else math.nan))
        flag = lambda v: "warn" if v is not None and v > _FLAG_FRACTION else ""
        rows.append([
            _cell(s["name"]), _cell(act or "(scores)"), _cell("-" if u is None else str(u)),
            _cell(s.get("pre_mean")), _cell(s.get("pre_std")), _cell(s.get("mean")),
            _cell(s.get("std")), _cell(s.get("saturated"), ".3f", flag(s.get("saturated"))),
            _cell(s.get("dead"), ".3f", flag(s.get("dead"))), _cell(s.get("grad_norm")),
            _cell(s.get("update_ratio"), ".3g", cls), _cell(word, cls=cls)])
        attrs.append(f'data-layer="{_e(s["name"])}"')
    return _table(_LAYER_HEADERS, rows, cls="layers", row_attrs=attrs)


def _ratio_summary(names: Sequence[str], ratios: Sequence[float]) -> str:
    r = [(n, v) for n, v in zip(names, ratios, strict=True) if v is not None and np.isfinite(v)]
    if not r:
        return _p("No update/weight ratio (no optimizer state to take a step with).", "note")
    high = [n for n, v in r if v > UPDATE_RATIO_HEALTHY * _RATIO_FACTOR]
    low = [n for n, v in r if v < UPDATE_RATIO_HEALTHY / _RATIO_FACTOR]
    parts = []
    if high:
        parts.append(f"{', '.join(high)} above 1e-2: the learning rate may be too high")
    if low:
        parts.append(f"{', '.join(low)} below 1e-4: the learning rate may be too low "
                     "(or its schedule has decayed it)")
    text = "; ".join(parts) if parts else "every layer within 10x of 1e-3: healthy"
    return _p("The size of one optimizer step relative to the weights, per layer; about 1e-3 is "
              f"healthy (the curriculum's rule of thumb). Here: {_e(text)}.")


def _notes_section(notes: Sequence[str]) -> tuple[str, str, str] | None:
    if not notes:
        return None
    return ("notes", "Notes", "<ul>" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>")


def _subtitle(kind: str, path: str, extra: str = "") -> str:
    return (f"A jaxnn {_e(kind)} directory: <code>{_e(os.path.abspath(path))}</code>"
            + (f"<br>{extra}" if extra else ""))


# --------------------------------------------------------------------------- train
class _Layers(NamedTuple):
    """What the per-layer sections of a train report show."""

    stats: list  # LayerStats, with activations
    activations: list  # activation name per layer (None: the scores)
    pre: list  # pre-activations per layer (None for the scores)
    num_classes: int
    step: int | None
    examples: int


def _measure_layers(model, params, model_state, x, y, *, loss, optimizer, opt_state, l2,
                    num_classes, step) -> _Layers:
    import jax

    from jaxnn import diagnostics

    stats = diagnostics.layer_stats(model, params, model_state, x, y, loss=loss,
                                    optimizer=optimizer, opt_state=opt_state, l2=l2,
                                    keep_activations=True)
    # layer_stats' own forward pass (training mode, its default key), for the pre-activations
    _, _, acts = model.trace(params, model_state, x, train=True, key=jax.random.key(0))
    pre = [np.asarray(a.pre) for a in acts] + [None]
    own = tuple(getattr(model, "activations", ()) or ())
    names = [own[i] if i < len(own) else None for i in range(len(stats))]
    names[-1] = None
    return _Layers(stats, names, pre, int(num_classes), step, int(x.shape[0]))


def _layers_of_run(path: str, probe_examples: int, notes: list[str]) -> _Layers | None:
    """Per-layer statistics of the run's trained model (:func:`jaxnn.load_run`: the newest
    good checkpoint, with its optimizer state for the update ratio) on the first
    ``probe_examples`` of its validation split; ``None`` and a note when they cannot be had."""
    import jax

    from jaxnn import config as _config
    from jaxnn import inference

    if not os.path.isdir(os.path.join(path, "checkpoints")):
        notes.append("no per-layer statistics: the run has no checkpoint")
        return None
    try:
        with warnings.catch_warnings():  # what loading had to do is noted below
            warnings.simplefilter("ignore", UserWarning)
            tm = inference.load_run(path)
    except (ValueError, OSError) as e:
        notes.append(f"no per-layer statistics: the trained model does not load ({e})")
        return None
    own = f"(process {os.getpid()})"
    notes.extend(n for n in tm.notes if own not in n)  # this process: the train that ends
    cfg = tm.config
    try:
        x, y = tm.split("val")
        x_train, y_train = tm.split("train")
    except (ValueError, OSError) as e:
        notes.append(f"no per-layer statistics: the run's data does not load ({e})")
        return None
    if x.shape[0] == 0:
        x, y = x_train, y_train
        notes.append("the validation split is empty: the probe batch is from the training split")
    optimizer = _config.build_optimizer(
        cfg, steps_per_epoch=_config.steps_per_epoch(cfg, int(x_train.shape[0])))
    try:
        found = _rundir.load_checkpoint(path, tm.model, optimizer, key=jax.random.key(cfg.seed),
                                        step=tm.step)
        opt_state = found.state.opt_state
    except (ValueError, OSError) as e:
        opt_state = None
        notes.append(f"the optimizer state does not load ({e}): update ratios from a fresh one")
    x, y = x[:probe_examples], y[:probe_examples]
    return _measure_layers(tm.model, tm.params, tm.state, tm.preprocess(x), y,
                           loss=_config.build_loss(cfg), optimizer=optimizer,
                           opt_state=opt_state, l2=cfg.l2, num_classes=tm.num_classes,
                           step=tm.step)


def _layers_of_experiment(experiment, state, probe_examples: int) -> _Layers:
    """The same from the run's own :class:`jaxnn.config.Experiment` and final
    :class:`jaxnn.train.TrainState` (what ``jaxnn train`` holds when it writes the report)."""
    data = experiment.data
    x, y = data.x_val, data.y_val
    if x.shape[0] == 0:
        x, y = data.x_train, data.y_train
    x, y = x[:probe_examples], y[:probe_examples]
    return _measure_layers(experiment.model, state.params, state.model_state, x, y,
                           loss=experiment.loss, optimizer=experiment.optimizer,
                           opt_state=state.opt_state, l2=experiment.config.l2,
                           num_classes=data.num_classes, step=None)


def _train_page(path: str, probe_examples: int, experiment=None, state=None) -> str:
    from jaxnn import diagnostics, train
    from jaxnn.config import RunConfig

    notes: list[str] = []
    cfg_dict = _rundir.read_json(os.path.join(path, "config.json"))
    records, bad = _rundir.read_metrics(os.path.join(path, "metrics.jsonl"))
    if bad:
        notes.append(f"metrics.jsonl: skipped garbled line(s) {', '.join(map(str, bad))}")
    summary = None
    if _has(path, "summary.json"):
        summary = _rundir.read_json(os.path.join(path, "summary.json"))
    try:
        cfg = RunConfig.from_dict(cfg_dict)
        loss_name = cfg.loss
    except ValueError as e:
        cfg, loss_name = None, cfg_dict.get("loss")
        notes.append(f"config.json: {e}")
    initial = summary.get("initial_loss") if summary else None

    if experiment is not None and state is not None:
        layers = _layers_of_experiment(experiment, state, probe_examples)
        layers = layers._replace(step=(summary or {}).get("epochs_done"))
    elif cfg is not None:
        layers = _layers_of_run(path, probe_examples, notes)
    else:
        layers = None
    num_classes = layers.num_classes if layers else None

    hidden_dead = None
    if layers:
        stats = layers.stats
        hidden = [(s.dead, s.activations.shape[-1]) for s in stats[:-1]]
        total = sum(u for _, u in hidden)
        if total:
            hidden_dead = sum(d * u for d, u in hidden) / total
    history = train.History(records=records,
                            stopped_reason=(summary or {}).get("stopped_reason", ""),
                            initial_loss=initial if initial is not None else (
                                records[0]["train_loss"] if records else math.nan))
    diag = diagnostics.diagnose(history, dead_fraction=None if hidden_dead is None
                                else [hidden_dead])
    expected = _expected_initial_loss(loss_name, num_classes) if num_classes else None

    # -- header
    if summary:
        status = (f"{_e(summary.get('status', ''))}: {_e(summary.get('stopped_reason', ''))}; "
                  f"test accuracy {_num(summary.get('test_acc'))}, test loss "
                  f"{_num(summary.get('test_loss'))} after "
                  f"{_e(summary.get('epochs_done', len(records)))} epoch(s)")
    else:
        status = f"not finished: {len(records)} epoch(s) recorded"
    sections = []
    sections.append(("verdicts", "Verdicts", _verdict_items(diag.verdicts, diag.reasons)
                     + _p("From <code>jaxnn.diagnostics.diagnose</code> on the learning curves "
                          "(and the dead units of the probe batch below).", "note")))
    sections.append(_config_section("train", cfg_dict, path))
    title = f"{cfg_dict.get('dataset', '')}: {cfg_dict.get('arch') or cfg_dict.get('hidden')} " \
            f"{cfg_dict.get('activation', '')}, {cfg_dict.get('optimizer', '')} lr " \
            f"{cfg_dict.get('lr', '')}"
    curves = _curves_figure(records, initial_loss=initial, expected=expected,
                            onset=diag.overfit_epoch, title=title)
    sections.append(("curves", "Learning curves",
                     _img(curves, "learning curves: loss and accuracy per epoch")
                     + _p("Loss should fall from about its expected initial value (dotted; "
                          "epoch 0 is the initialization). Flat from the start: learning rate "
                          "too low; a jump up or NaN: too high; validation loss rising while "
                          "training loss falls (dashed line): overfitting.", "note")
                     + _verdict_items(diag.verdicts, diag.reasons)))
    sections.append(("initial-loss", "Initial loss check", _initial_loss_sentence(
        expected, initial, num_classes=num_classes,
        what="measured at initialization (the run's own weights)")))
    if layers:
        stats, acts, pres, _, step, n_probe = layers
        step = "-" if step is None else step
        as_dicts = [s._asdict() for s in stats]
        units = [int(s.activations.shape[-1]) for s in stats]
        names = [s.name for s in stats]
        ratios = [s.update_ratio for s in stats]
        intro = _p(f"The model of epoch {_e(step)} on a probe batch of {n_probe} validation "
                   "examples, in training mode (<code>jaxnn.diagnostics.layer_stats</code>). "
                   "Dead: units that are zero for every example (dead ReLUs never recover); "
                   "saturated: tanh/sigmoid outputs at their flat ends. Over 30% is flagged.")
        sections.append(("layers", "Per-layer statistics",
                         intro + _layers_table(as_dicts, acts, units)))
        sections.append(("histograms", "Activation histograms", _img(
            _histograms_figure(list(zip(stats, acts, pres, strict=True))),
            "per-layer activation histograms")
            + _p("Healthy: a spread that stays similar layer to layer. Collapsing to a spike at "
                 "0: weights too small; piling up at the ends (tanh/sigmoid): too large; a "
                 "ReLU layer's spike at 0 is its inactive half.", "note")))
        sections.append(("update-ratios", "Update/weight ratios",
                         _img(_ratio_figure(names, ratios), "update/weight ratio per layer")
                         + _ratio_summary(names, ratios)))
    notes_sec = _notes_section(notes)
    if notes_sec:
        sections.append(notes_sec)
    return _page(f"jaxnn report: {os.path.basename(os.path.abspath(path))}",
                 _subtitle("train", path, status), sections)


# --------------------------------------------------------------------------- diagnose
def _diagnose_page(path: str) -> str:
    from jaxnn import diagnostics

    d = _rundir.read_json(os.path.join(path, "diagnosis.json"))
    notes: list[str] = []
    cfg = d.get("config") or {}
    training = d.get("training") or {}
    records = [r for r in training.get("records") or [] if isinstance(r, Mapping)]
    init = d.get("initial_loss") or {}
    verdicts, reasons = list(d.get("verdicts") or []), list(d.get("reasons") or [])
    if records:
        again = diagnostics.diagnose(records, initial_loss=training.get("initial_loss"))
        onset = again.overfit_epoch
        for v, r in zip(again.verdicts, again.reasons, strict=True):
            if v not in verdicts:
                verdicts.append(v)
                reasons.append(r)
    else:
        onset = None
    if len(reasons) != len(verdicts):
        reasons = (reasons + [""] * len(verdicts))[:len(verdicts)]
    sections = [("verdicts", "Verdicts", _verdict_items(verdicts, reasons))]
    sections.append(_config_section("diagnose", cfg, path))
    curves = _curves_figure(records, initial_loss=training.get("initial_loss"),
                            expected=init.get("expected"), onset=onset,
                            title=f"diagnose: {cfg.get('optimizer', '')} lr {cfg.get('lr', '')}")
    stopped = training.get("stopped_reason")
    sections.append(("curves", "Learning curves", _img(curves, "learning curves")
                     + (_p(f"The short run: {_e(stopped)}.", "note") if stopped else "")))
    body = _initial_loss_sentence(init.get("expected"), init.get("measured"),
                                  num_classes=None, what=(
                                      f"measured, weights scaled by {init.get('init_scale', '')}"))
    if init:
        raised = init.get("with_l2") is not None and init.get("measured") is not None and \
            init["with_l2"] > init["measured"]
        body += _p(f"With L2 {_num(init.get('l2'))}: {_num(init.get('with_l2'))} "
                   f"({'raised, as it must' if raised else 'NOT raised: check the penalty'}); "
                   f"as initialized: {_num(init.get('as_initialized'))}.")
    sections.append(("initial-loss", "Initial loss check", body))
    ov = d.get("overfit") or {}
    if ov:
        ok = bool(ov.get("ok"))
        sections.append(("overfit", "Overfit a tiny subset", _p(
            f"{_e(ov.get('num_examples', ''))} examples, {_e(ov.get('epochs', ''))} epoch(s): "
            f"loss {_num(ov.get('final_loss'))}, accuracy {_num(ov.get('train_acc'))}: "
            + ("<b>ok</b>: the pipeline can fit" if ok else
               "<b>FAILED</b>: a bug in the pipeline, or the learning rate far off"),
            "good" if ok else "bad")))
    stats = [s for s in d.get("layers") or [] if isinstance(s, Mapping) and "name" in s]
    if stats:
        act = cfg.get("activation")
        acts = [act] * (len(stats) - 1) + [None]
        sections.append(("layers", "Per-layer statistics", _p(
            "After the short run, on the probe batch, training mode. Histograms need the model "
            "itself, which a diagnose directory does not keep: a <code>jaxnn train</code> "
            "run's report has them.", "note") + _layers_table(stats, acts, [None] * len(stats))))
        names = [s["name"] for s in stats]
        ratios = [math.nan if s.get("update_ratio") is None else float(s["update_ratio"])
                  for s in stats]
        sections.append(("update-ratios", "Update/weight ratios",
                         _img(_ratio_figure(names, ratios), "update/weight ratio per layer")
                         + _ratio_summary(names, ratios)))
    notes_sec = _notes_section(notes)
    if notes_sec:
        sections.append(notes_sec)
    return _page(f"jaxnn report: {os.path.basename(os.path.abspath(path))}",
                 _subtitle("diagnose", path), sections)


# --------------------------------------------------------------------------- search
def _study_url(path: str, results: Mapping) -> str | None:
    local = os.path.join(path, "study.db")
    if os.path.isfile(local):
        return f"sqlite:///{os.path.abspath(local)}"
    url = (results.get("study") or {}).get("storage")
    if isinstance(url, str) and url.startswith("sqlite:///") and os.path.isfile(
            url[len("sqlite:///"):]):
        return url
    return None


def _importances(path: str, results: Mapping) -> tuple[dict[str, float] | None, str]:
    """Each hyperparameter's importance, or ``None`` and why not."""
    url = _study_url(path, results)
    name = (results.get("study") or {}).get("name") or "jaxnn-search"
    if url is None:
        where = (results.get("study") or {}).get("storage")
        return None, (f"the study is not in a local study.db ({where}): importance not "
                      "computed" if where else "no study.db: importance not computed")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            study = optuna.load_study(study_name=name, storage=url)
            complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
            if len(complete) < 2:
                return None, (f"{len(complete)} finished trial(s): importance needs at least 2 "
                              "(pruned and diverged trials do not count)")
            imp = optuna.importance.get_param_importances(study)
    except Exception as e:  # an old or locked database, too few distinct values, ...
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return None, f"importance could not be computed: {msg}"
    if not imp:
        return None, "no hyperparameter varies over the finished trials: nothing to rank"
    return {str(k): float(v) for k, v in imp.items()}, (
        f"fANOVA over the study's {len(complete)} finished trials (optuna.importance)")


def _search_page(path: str) -> str:
    notes: list[str] = []
    results_file = os.path.join(path, "results.json")
    results = _rundir.read_json(results_file) if os.path.exists(results_file) else {}
    if not results:
        notes.append("no results.json yet (the search has not finished a round): only the "
                     "study is shown")
    trials = [t for t in results.get("trials") or [] if isinstance(t, Mapping)]
    best = results.get("best")
    config = dict(results.get("config") or {})
    method = results.get("method", config.get("method", ""))
    sections = []
    if best:
        params = best.get("params") or {}
        body = (_p(f"Trial {_e(best.get('number', ''))}: val_loss {_num(best.get('val_loss'))}, "
                   f"val_acc {_num(best.get('val_acc'))} after {_e(best.get('epochs', ''))} "
                   "epoch(s).")
                + _kv_table(params, cls="config")
                + _p("Retrain it exactly (same initial weights, data order and "
                     "hyperparameters):") + _pre(best.get("command", "")))
    else:
        body = _p("No usable trial: every trial diverged (try a lower --lr-range).", "bad")
    sections.append(("best", "Best trial", body))
    search_keys = [k for k in config if k not in _config_defaults()]
    train_cfg = {k: v for k, v in config.items() if k in _config_defaults()}
    search_flags = []
    for k in search_keys:
        v = config[k]
        if v is None or v is False or k == "method" or v == "none":
            continue
        search_flags += ["--" + k.replace("_", "-")] + ([] if v is True else [str(v)])
    if config:
        sections.append(_config_section(f"search --method {method}" if method else "search",
                                        train_cfg, path, extra=search_flags))
    uri = _png_file_uri(os.path.join(path, "search.png")) or _trials_figure(trials)
    if trials:
        params = sorted({k for t in trials for k in (t.get("params") or {})})
        rows = [[_cell(str(i + 1)), _cell(str(t.get("number", ""))),
                 *(_cell((t.get("params") or {}).get(p)) for p in params),
                 _cell(t.get("val_loss")), _cell(t.get("val_acc")), _cell(t.get("status")),
                 _cell(t.get("epochs"))]
                for i, t in enumerate(trials[:_TRIALS_SHOWN])]
        n_div = sum(t.get("status") == "diverged" for t in trials)
        n_pruned = sum(t.get("status") == "pruned" for t in trials)
        table = (_p(f"{len(trials)} trials ({n_div} diverged, {n_pruned} pruned), best first"
                    + (f"; the first {_TRIALS_SHOWN} shown" if len(trials) > _TRIALS_SHOWN
                       else "") + ".")
                 + _table(["rank", "trial", *params, "val_loss", "val_acc", "status", "epochs"],
                          rows, cls="trials"))
    else:
        table = _p("No trial recorded.", "note")
    sections.append(("trials", "Trials", _img(uri, "validation accuracy against each searched "
                                                   "hyperparameter") + table))
    imp, how = _importances(path, results)
    if imp:
        rows = [[_cell(k), _cell(v, ".3f")] for k, v in imp.items()]
        body = (_img(_importance_figure(imp), "hyperparameter importance")
                + _table(["hyperparameter", "importance"], rows, cls="importance")
                + _p(f"{_e(how)}. A high share: the objective depends on this one most; tune it "
                     "first (and over a wider range).", "note"))
    else:
        body = _p(_e(how[0].upper() + how[1:]) + ".", "note")
    sections.append(("importance", "Hyperparameter importance", body))
    notes_sec = _notes_section(notes)
    if notes_sec:
        sections.append(notes_sec)
    sub = (f"{_e(method)} search, {len(trials)} trials" if trials else "")
    return _page(f"jaxnn report: {os.path.basename(os.path.abspath(path))}",
                 _subtitle("search", path, sub), sections)


# --------------------------------------------------------------------------- ensemble
def _ensemble_page(path: str) -> str:
    s = _rundir.read_json(os.path.join(path, "summary.json"))
    accs = list(s.get("member_test_acc") or [])
    losses = list(s.get("member_test_loss") or [])
    status = list(s.get("status") or [])
    n = len(accs)
    losses = (losses + [None] * n)[:n]
    status = (status + [""] * n)[:n]
    rows = [[_cell(f"seed {k}"), _cell(a), _cell(l), _cell(st)]
            for k, (a, l, st) in enumerate(zip(accs, losses, status, strict=True))]
    rows.append([_cell("mean member"), _cell(s.get("mean_member_test_acc")),
                 _cell(float(np.mean([l for l in losses if l is not None]))
                       if any(l is not None for l in losses) else None), _cell("")])
    healthy = sum(st != "diverged" for st in status)
    rows.append([_cell(f"ensemble of {healthy}"), _cell(s.get("ensemble_test_acc"), cls="good"),
                 _cell(s.get("ensemble_test_loss")), _cell("")])
    gain = None
    if s.get("ensemble_test_acc") is not None and s.get("mean_member_test_acc") is not None:
        gain = s["ensemble_test_acc"] - s["mean_member_test_acc"]
    fig = _figure(6, 0.4 * (n + 1) + 1.2)
    ax = fig.subplots()
    labels = [f"seed {k}" for k in range(n)] + ["ensemble"]
    vals = [math.nan if a is None else a for a in accs] + [
        math.nan if s.get("ensemble_test_acc") is None else s["ensemble_test_acc"]]
    ax.barh(range(len(labels)), vals, color=["C0"] * n + ["C2"])
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()
    finite = [v for v in vals if np.isfinite(v)]
    if finite:
        ax.set_xlim(max(0.0, min(finite) - 0.05), min(1.0, max(finite) + 0.02))
    ax.set(xlabel="test accuracy", title="members and their ensemble")
    ax.grid(alpha=0.3, axis="x")
    body = (_img(_uri(fig), "test accuracy of each member and of the ensemble")
            + _table(["model", "test_acc", "test_loss", "status"], rows, cls="members")
            + _p("Averaging the members' predicted probabilities"
                 + (f" gains {gain:+.4f} accuracy over the mean member." if gain is not None
                    else ".")))
    sections = [("members", "Members and ensemble", body)]
    cfg = dict(s.get("config") or {})
    if cfg:
        sections.append(_config_section("ensemble", cfg, path,
                                        extra=["--members", str(s.get("members", n))]))
    sections.append(("notes", "Notes", _p(
        "An ensemble directory keeps no learning curves or models: a <code>jaxnn train</code> "
        "run with the same flags has them, in its own report.",
        "note")))
    return _page(f"jaxnn report: {os.path.basename(os.path.abspath(path))}",
                 _subtitle("ensemble", path, f"{n} members"), sections)


# --------------------------------------------------------------------------- public
def report_html(run_dir: str | os.PathLike, *, probe_examples: int = PROBE_EXAMPLES,
                experiment=None, state=None) -> str:
    """The babysitting page of ``run_dir`` (see the module docstring) as one HTML string.

    Args:
      run_dir: a ``train``, ``diagnose``, ``search`` or ``ensemble`` directory.
      probe_examples: validation examples of a train run's layer statistics.
      experiment, state: a train run's :class:`jaxnn.config.Experiment` and final
        :class:`jaxnn.train.TrainState`, when the caller holds them (``jaxnn train`` does):
        the layer statistics use them instead of loading the model and the data again.

    Raises:
      jaxnn.rundir.RunDirError: not such a directory (one line), or its files are damaged.
    """
    path = os.fspath(run_dir)
    if isinstance(probe_examples, bool) or not isinstance(probe_examples, int) or \
            probe_examples < 1:
        raise ValueError(f"probe_examples: expected an integer >= 1, got {probe_examples!r}")
    kind = run_kind(path)
    if kind == "train":
        return _train_page(path, probe_examples, experiment, state)
    if kind == "diagnose":
        return _diagnose_page(path)
    if kind == "search":
        return _search_page(path)
    return _ensemble_page(path)


def write_report(run_dir: str | os.PathLike, *, probe_examples: int = PROBE_EXAMPLES,
                 experiment=None, state=None) -> str:
    """Write :func:`report_html` of ``run_dir`` to ``run_dir/report.html`` atomically (a
    temporary file renamed into place) and return that path. Nothing is written when the page
    cannot be made. ``experiment`` and ``state``: see :func:`report_html`."""
    page = report_html(run_dir, probe_examples=probe_examples, experiment=experiment,
                       state=state)
    out = os.path.join(os.fspath(run_dir), REPORT_FILE)
    _rundir.write_bytes_atomic(out, page.encode("utf-8"))
    return out
