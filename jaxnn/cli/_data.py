"""``jaxnn data download NAME...`` and ``jaxnn data list``: the dataset cache
(:func:`jaxnn.datasets.download`, :func:`jaxnn.datasets.cache_status`), and the download progress
bar every verb that loads data shows on a terminal (:class:`DownloadProgress`)."""

from __future__ import annotations

from jaxnn.cli import CLIError
from jaxnn.cli._common import DownloadProgress, augment_arg, table  # noqa: F401 (re-exported)

#: The datasets that download (``jaxnn.datasets.SOURCES``), in ``jaxnn data list`` order.
DOWNLOADABLE = ("mnist", "fashion_mnist", "cifar10")


def add_parser(sub) -> None:
    d = sub.add_parser(
        "data", help="download datasets ahead of time; list what is cached",
        description="MNIST, Fashion-MNIST and CIFAR-10 download on first use into a cache "
                    "(--data-dir, else $JAXNN_DATA, else ~/.cache/jaxnn), from the official "
                    "locations or a mirror (--data-url, else $JAXNN_DATA_URL), checked against "
                    "the published checksums. These commands do it ahead of time and show the "
                    "cache. The digits data set is embedded and needs no download.")
    dd = d.add_subparsers(dest="data_command", metavar="COMMAND", parser_class=type(d))

    g = dd.add_parser(
        "download", help="download and verify datasets into the cache",
        description="Download the original files of each NAME into DATA_DIR/NAME and verify "
                    "them against the published checksums. Files already there that verify "
                    "are kept. A failed download (HTTP error, no network, checksum mismatch) "
                    "leaves nothing behind.")
    g.add_argument("names", nargs="+", metavar="NAME",
                   help=f"{' | '.join(DOWNLOADABLE)} | all")
    _add_dir_flag(g)
    g.add_argument("--data-url", default=None, metavar="URL",
                   help="base URL of a mirror serving the original file names "
                        "(default: $JAXNN_DATA_URL, else the official location)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.set_defaults(func=run_download)

    ls = dd.add_parser(
        "list", help="show which datasets are in the cache",
        description="One line per dataset: cached, partly cached or not cached, the size on "
                    "disk and the directory. --verify also checks every cached file against "
                    "its published checksum.")
    _add_dir_flag(ls)
    ls.add_argument("--verify", action="store_true", help="check the checksums of cached files")
    ls.set_defaults(func=run_list)


def _add_dir_flag(p) -> None:
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="the cache directory (default: $JAXNN_DATA, else ~/.cache/jaxnn)")


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # unreachable


def _names(requested: list[str]) -> list[str]:
    names = []
    for name in requested:
        if name == "all":
            names += [n for n in DOWNLOADABLE if n not in names]
        elif name == "digits":
            raise CLIError("digits is embedded (scikit-learn's bundled digits): nothing to "
                           "download")
        elif name not in DOWNLOADABLE:
            raise CLIError(f"unknown dataset {name!r}: expected {', '.join(DOWNLOADABLE)} or all")
        elif name not in names:
            names.append(name)
    return names


def run_download(args) -> int:
    from jaxnn import datasets

    names = _names(args.names)
    for name in names:
        with DownloadProgress(enabled=None if not args.no_progress else False) as progress:
            paths = datasets.download(name, data_dir=args.data_dir, data_url=args.data_url,
                                      progress=progress)
        size = sum(p.stat().st_size for p in paths)
        if progress.fetched:
            what = f"downloaded {len(progress.fetched)} of {len(paths)} files"
        else:
            what = f"already cached ({len(paths)} files)"
        print(f"{name}: {what}, {_size(size)}, checksums verified, in {paths[0].parent}")
    return 0


def run_list(args) -> int:
    from jaxnn import datasets

    root = datasets.cache_dir(args.data_dir)
    rows = [["digits", "embedded", "-", "-", "(scikit-learn)"]]
    for name in DOWNLOADABLE:
        st = datasets.cache_status(name, data_dir=args.data_dir, verify=args.verify)
        n = len(datasets.SOURCES[name].files)
        have = n - len(st.missing)
        if st.mismatched:
            status = f"checksum mismatch: {', '.join(st.mismatched)}"
        elif have == n:
            status = "cached, verified" if args.verify else "cached"
        elif have:
            status = "partly cached"
        else:
            status = "not cached"
        rows.append([name, status, f"{have}/{n}", _size(st.size) if have else "-",
                     str(st.directory)])
    print(f"cache: {root}")
    print(table(rows, ["dataset", "status", "files", "size", "directory"]))
    return 0
