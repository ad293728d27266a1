"""``jaxnn evaluate``, ``jaxnn predict`` and ``jaxnn export``: using a trained run
(:mod:`jaxnn.inference`). None of them changes the run directory or takes its lock, so they work
while the run is still training (on its newest finished checkpoint) and on a read-only copy."""

from __future__ import annotations

import os
import sys
import warnings

from jaxnn.cli import CLIError


def add_parser(sub) -> None:
    e = sub.add_parser("evaluate", help="loss and accuracy of a trained run on a data split",
                       description="Print the loss and accuracy of a trained run's newest good "
                                   "checkpoint on a split of its dataset (the test split by "
                                   "default: summary.json's test_loss and test_acc), with the "
                                   "preprocessing fitted at training time.")
    e.add_argument("run_dir", metavar="RUN_DIR", help="a `jaxnn train` run directory")
    e.add_argument("--dataset", default=None, metavar="D|PATH.npz",
                   help="evaluate on this dataset instead, split like the run's (default: the "
                        "run's own)")
    e.add_argument("--split", choices=("test", "val", "train"), default="test",
                   help="which split")
    e.add_argument("--json", default=None, metavar="PATH",
                   help="also write the result to PATH as JSON")
    _add_common(e)
    e.set_defaults(func=run_evaluate)

    p = sub.add_parser("predict", help="class probabilities of a trained run for new inputs",
                       description="Write the class probabilities (`probs` [n, C]) and the "
                                   "predicted classes (`labels` [n]) of the examples in "
                                   "--input (array `x`, raw like the dataset's files: the run's "
                                   "preprocessing is applied) to --output.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a `jaxnn train` run directory")
    p.add_argument("--input", required=True, metavar="X.npz",
                   help="a .npz with array x: [n, ...] in the dataset's example shape "
                        "(required, no default)")
    p.add_argument("--output", required=True, metavar="P.npz",
                   help="the .npz to write, with probs and labels (required, no default)")
    p.add_argument("--batch-size", type=int, default=1024, help="examples per batch")
    _add_common(p)
    p.set_defaults(func=run_predict)

    x = sub.add_parser("export", help="save a trained run's inference function with jax.export",
                       description="Write the inference function (preprocessing, the model in "
                                   "evaluation mode, softmax; the parameters baked in) as a "
                                   "serialized jax.export.Exported for a float32 batch of any "
                                   "size. Load it without jaxnn: jax.export.deserialize("
                                   "bytearray(open(OUT_FILE, 'rb').read())).call(x).")
    x.add_argument("run_dir", metavar="RUN_DIR", help="a `jaxnn train` run directory")
    x.add_argument("out_file", metavar="OUT_FILE", help="the file to write")
    x.add_argument("--platforms", default=None, metavar="cpu,cuda,tpu",
                   help="platforms to lower for, comma-separated from cpu, cuda, rocm, tpu "
                        "(default: this machine's)")
    _add_common(x)
    x.set_defaults(func=run_export)


def _add_common(p) -> None:
    p.add_argument("--checkpoint", type=int, default=None, metavar="N",
                   help="use the checkpoint saved after epoch N (default: the newest that "
                        "restores)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")


# --------------------------------------------------------------------------- checks
def _check_output(path: str, flag: str, *, force: bool, suffix: str | None = None) -> None:
    """Refuse an output path that cannot or should not be written, before any work."""
    if suffix is not None and not path.endswith(suffix):
        raise CLIError(f"{flag} {path}: expected a {suffix} file name")
    if os.path.isdir(path):
        raise CLIError(f"{flag} {path}: is a directory")
    if os.path.lexists(path) and not force:
        raise CLIError(f"{flag} {path} exists; pass --force to overwrite it")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise CLIError(f"{flag} {path}: no such directory {os.path.dirname(path) or '.'}")
    probe = os.path.join(parent, f".jaxnn-probe-{os.getpid()}")
    try:  # a real write: permissions alone say nothing for root or a read-only file system
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise CLIError(f"{flag} {path}: cannot write in {os.path.dirname(path) or '.'}: "
                       f"{e.strerror or type(e).__name__}") from None


def _check_checkpoint(args) -> None:
    if args.checkpoint is not None and args.checkpoint < 0:
        raise CLIError(f"--checkpoint must be an epoch number >= 0, got {args.checkpoint}")


def _load(args, verb: str):
    """The trained run, its notes printed (one line each, on stderr)."""
    from jaxnn import inference

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the notes say the same
        model = inference.load_run(args.run_dir, checkpoint=args.checkpoint)
    for note in model.notes:
        sys.stderr.write(f"jaxnn {verb}: {note}\n")
    sys.stderr.flush()
    return model


# --------------------------------------------------------------------------- verbs
def run_evaluate(args) -> int:
    from jaxnn import rundir

    _check_checkpoint(args)
    if args.json is not None:
        _check_output(args.json, "--json", force=args.force)
    model = _load(args, "evaluate")
    try:
        x, y = model.split(args.split, dataset=args.dataset)
        what = f"--dataset {args.dataset}" if args.dataset is not None else "the run's data"
        x = model.check_input(x, name=f"{what}: x_{args.split}")
    except FileNotFoundError as e:
        raise CLIError(f"--dataset: {e}") from None
    try:
        res = model.evaluate(x, y)
    except ValueError as e:
        raise CLIError(f"--dataset {args.dataset}: {e}" if args.dataset else str(e)) from None
    dataset = args.dataset if args.dataset is not None else model.config.dataset
    print(f"loss {res['loss']:.4f}  accuracy {res['acc']:.4f}  ({res['n']} examples: the "
          f"{args.split} split of {dataset}; checkpoint {model.step})")
    if args.json is not None:
        rundir.write_json_atomic(args.json, {"run_dir": args.run_dir, "checkpoint": model.step,
                                             "dataset": dataset, "split": args.split, **res})
    return 0


def run_predict(args) -> int:
    import numpy as np

    from jaxnn import rundir

    _check_checkpoint(args)
    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be >= 1, got {args.batch_size}")
    _check_output(args.output, "--output", force=args.force, suffix=".npz")
    try:
        arrays = rundir.read_npz(args.input)
    except rundir.RunDirError as e:
        raise CLIError(f"--input {e}") from None
    if "x" not in arrays:
        raise CLIError(f"--input {args.input}: no array 'x' (found: "
                       f"{', '.join(sorted(arrays)) or 'none'})")
    model = _load(args, "predict")
    x = model.check_input(arrays["x"], name=f"--input {args.input}: x")
    probs = model.predict(x, batch_size=args.batch_size)
    labels = probs.argmax(axis=1).astype(np.int32)
    rundir.write_npz_atomic(args.output, {"probs": probs, "labels": labels})
    print(f"wrote {args.output}: probs [{probs.shape[0]}, {probs.shape[1]}], labels "
          f"[{labels.shape[0]}] (checkpoint {model.step} of {args.run_dir})")
    return 0


def run_export(args) -> int:
    from jaxnn import inference

    _check_checkpoint(args)
    platforms = None
    if args.platforms is not None:
        platforms = [p.strip() for p in args.platforms.split(",") if p.strip()]
        unknown = [p for p in platforms if p not in inference.PLATFORMS]
        if unknown or not platforms:
            raise CLIError(f"--platforms: expected a comma-separated subset of "
                           f"{', '.join(inference.PLATFORMS)}, got {args.platforms!r}")
    _check_output(args.out_file, "OUT_FILE", force=args.force)
    model = _load(args, "export")
    exported = model.export(args.out_file, platforms=platforms)
    shape = ", ".join(["b", *map(str, model.input_shape)])
    print(f"wrote {args.out_file}: float32 [{shape}] -> probabilities [b, {model.num_classes}], "
          f"platforms {', '.join(exported.platforms)} (checkpoint {model.step} of "
          f"{args.run_dir})")
    return 0
