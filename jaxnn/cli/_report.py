"""``jaxnn report RUN_DIR``: the babysitting page of a run (:mod:`jaxnn.report`).

Writes ``RUN_DIR/report.html`` (one self-contained page: curves with verdicts, per-layer
statistics and histograms, update/weight ratios, the initial-loss check; for a search the trials
and each hyperparameter's importance) and prints its path. A directory that is not a jaxnn
train, diagnose, search or ensemble directory is a one-line error; nothing is written.
"""

from __future__ import annotations

import warnings

from jaxnn.cli import CLIError


def add_parser(sub) -> None:
    p = sub.add_parser(
        "report", help="write RUN_DIR/report.html: the babysitting page of a run, for a browser",
        description="Write RUN_DIR/report.html, one self-contained page (no network requests: "
                    "images inline) for a browser: the command and config, learning curves "
                    "with the curriculum's verdicts (learning rate too high/low, the epoch "
                    "overfitting starts), the initial-loss check, and for a train run per-layer "
                    "statistics of the trained model on a probe batch of its validation split "
                    "(activation histograms, dead and saturated fractions, update/weight ratio "
                    "against 1e-3); for a search the trials, the best trial's retrain command "
                    "and each hyperparameter's importance; for an ensemble the members against "
                    "the ensemble. `jaxnn train` writes it at the end of every run.")
    p.add_argument("run_dir", metavar="RUN_DIR",
                   help="a `jaxnn train`, `diagnose`, `search` or `ensemble` directory")
    p.add_argument("--probe-examples", type=int, default=256,
                   help="validation examples for a train run's per-layer statistics")
    p.set_defaults(func=run_report)


def run_report(args) -> int:
    from jaxnn import report

    if args.probe_examples < 1:
        raise CLIError(f"--probe-examples must be >= 1, got {args.probe_examples}")
    with warnings.catch_warnings():  # what loading had to do is on the page (its notes)
        warnings.simplefilter("ignore", UserWarning)
        path = report.write_report(args.run_dir, probe_examples=args.probe_examples)
    print(f"report: {path}")
    return 0
