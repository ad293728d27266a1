r"""The architecture mini-language of ``--arch``: one table of kinds.

An architecture is a comma-separated list of entries, the hidden layers input to output (the
output layer ``Dense(num_classes)`` is added by the builder)::

    conv:32,conv:32,pool,conv:64,pool,fc:128
    conv:16,res(conv:16,conv:16),pool,res(conv:16,conv:16),pool,fc:64

Every kind is one row of :data:`KINDS` (an :class:`ArchKind`): its syntax, its help text, how
its arguments parse, whether it needs image inputs ``[height, width, channels]`` and how it
builds layers. The parser (:func:`parse_arch`), the builder (:func:`build_layers`,
:func:`jaxnn.models.convnet`), the CLI's ``--arch`` help (:data:`ARCH_GRAMMAR`) and the README's
list are all read off that table, so a kind is added in one place: its row (and its tests).

======================  =========================================================================
``conv:C[:K]``          ``Conv2D(C, K)`` (K = 3 by default, SAME padding) -> [BatchNorm] -> act
``pool`` / ``avgpool``  2x2 max / average pooling
``fc:N``                ``Dense(N)`` -> [BatchNorm] -> act -> [Dropout(dropout)] (flattens images)
``dropout:P``           ``Dropout(P)``
``res(ENTRIES)``        ``Residual(serial(ENTRIES))``: :math:`y = x + f(x)`, with a 1x1
                        projection of :math:`x` when :math:`f` changes the shape
======================  =========================================================================
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

__all__ = [
    "ArchItem",
    "ArchKind",
    "BuildOptions",
    "KINDS",
    "ARCH_GRAMMAR",
    "ARCH_HELP",
    "DEFAULT_ARCH",
    "parse_arch",
    "format_arch",
    "needs_images",
    "activation_options",
    "build_layers",
    "kinds_table",
]

#: The usual small image classifier.
DEFAULT_ARCH = "conv:32,conv:32,pool,conv:64,pool,fc:128"


class ArchItem(NamedTuple):
    """One entry of an architecture: ``kind`` (a :data:`KINDS` name), ``size`` (channels, units
    or drop probability; ``None`` for kinds without one), ``kernel`` (a convolution's kernel
    size) and ``body`` (the entries inside ``res(...)``)."""

    kind: str
    size: float | None = None
    kernel: int | None = None
    body: tuple[ArchItem, ...] = ()

    def __str__(self) -> str:
        return KINDS[self.kind].format(self)


class BuildOptions(NamedTuple):
    """What every hidden layer shares: the nonlinearity (``activation`` with ``options``, e.g.
    maxout's ``num_pieces``), initializers, batch norm and the ``fc`` layers' dropout."""

    activation: str = "relu"
    options: dict = {}
    init: Any = "he_normal"
    bias_init: Any = 0.0
    batch_norm: bool = False
    bn_momentum: float = 0.9
    dropout: float = 0.0


class ArchKind(NamedTuple):
    """One row of the table.

    Attributes:
      name: the entry's name (``"conv"``).
      syntax: how it is written (``"conv:C[:K]"``).
      help: one line for ``--help`` and the docs.
      parse: ``parse(args: list[str]) -> ArchItem`` for ``name:arg:arg`` (raises ``ValueError``).
      build: ``build(item, opts, image: bool) -> (layers, image_after)``: the layers of one entry
        given whether its input is still an image.
      images: the entry needs image inputs (``[height, width, channels]``).
      format: ``format(item) -> str``, the entry written back.
    """

    name: str
    syntax: str
    help: str
    parse: Callable[[list[str]], ArchItem]
    build: Callable[[ArchItem, BuildOptions, bool], tuple[list, bool]]
    images: bool
    format: Callable[[ArchItem], str]


# --------------------------------------------------------------------------- the kinds
def _positive_int(text: str) -> int:
    n = int(text)
    if n < 1:
        raise ValueError(text)
    return n


def _nargs(args: list[str], allowed: Sequence[int]) -> None:
    if len(args) not in allowed:
        raise ValueError(f"takes {' or '.join(map(str, allowed))} argument(s), got {len(args)}")


def activation_options(activation: str, *, num_pieces: int = 2,
                       prelu_init: float = 0.25) -> dict:
    """The options of the hidden layers' :func:`~jaxnn.layers.Activation`, from the
    activation's registry entry: ``num_pieces`` for the option that shrinks the width
    (maxout's), and ``prelu_init`` as the initial value of a learnable slope ``alpha`` (other
    learnable parameters start at their entry's default).

    Raises:
      ValueError: for an unknown activation (listing the valid names).
    """
    from jaxnn import activations

    entry = activations.entry(activation)
    options = {}
    if entry.pieces_option is not None:
        options[entry.pieces_option] = int(num_pieces)
    if "alpha" in entry.params:
        options["alpha"] = float(prelu_init)
    return options


def _hidden(affine: Callable[..., Any], width: int, opts: BuildOptions, *,
            dropout: float) -> list:
    """``affine -> [BatchNorm] -> Activation -> [Dropout]``. Batch norm's ``beta`` replaces the
    bias (a bias before it would get zero gradient); an activation that shrinks the last axis
    by a factor (maxout's ``num_pieces``) gets that many times the outputs."""
    from jaxnn import activations, layers

    pieces = activations.entry(opts.activation).pieces_option
    factor = int(opts.options.get(pieces, 1)) if pieces is not None else 1
    out = [affine(int(width) * factor, use_bias=not opts.batch_norm)]
    if opts.batch_norm:
        out.append(layers.BatchNorm(momentum=opts.bn_momentum))
    out.append(layers.Activation(opts.activation, **opts.options))
    if dropout:
        out.append(layers.Dropout(dropout))
    return out


def _parse_conv(args):
    _nargs(args, (1, 2))
    return ArchItem("conv", _positive_int(args[0]), _positive_int(args[1]) if len(args) == 2
                    else 3)


def _build_conv(item, opts, image):
    from jaxnn import layers

    def conv(n, use_bias=True):
        return layers.Conv2D(n, item.kernel or 3, init=opts.init, bias_init=opts.bias_init,
                             use_bias=use_bias)

    return _hidden(conv, int(item.size), opts, dropout=0.0), True


def _parse_none(kind):
    def parse(args):
        _nargs(args, (0,))
        return ArchItem(kind)

    return parse


def _build_pool(item, opts, image):
    from jaxnn import layers

    return [layers.MaxPool(2) if item.kind == "pool" else layers.AvgPool(2)], True


def _build_gap(item, opts, image):
    from jaxnn import layers

    return [layers.GlobalAvgPool()], False


def _parse_fc(args):
    _nargs(args, (1,))
    return ArchItem("fc", _positive_int(args[0]))


def _build_fc(item, opts, image):
    from jaxnn import layers

    def dense(n, use_bias=True):
        return layers.Dense(n, init=opts.init, bias_init=opts.bias_init, use_bias=use_bias)

    flatten = [layers.Flatten()] if image else []
    return flatten + _hidden(dense, int(item.size), opts, dropout=opts.dropout), False


def _parse_dropout(args):
    _nargs(args, (1,))
    p = float(args[0])
    if not 0.0 <= p < 1.0:
        raise ValueError(f"a drop probability is in [0, 1), got {args[0]}")
    return ArchItem("dropout", p)


def _build_dropout(item, opts, image):
    from jaxnn import layers

    return [layers.Dropout(float(item.size))], image


def _parse_res(args):  # res's body is parsed by parse_arch (it holds commas)
    raise ValueError("is written res(ENTRIES), e.g. res(conv:16,conv:16)")


def _build_res(item, opts, image):
    from jaxnn import layers

    body, after = _build_items(item.body, opts, image)
    if image and not after:
        raise ValueError(f"{item}: a residual block cannot turn images into flat features "
                         "(put fc entries after it)")
    return [layers.Residual(layers.serial(*body))], after


def _fmt_size(item):
    return f"{item.kind}:{int(item.size)}"


#: The table of kinds, in the order the help lists them.
KINDS: dict[str, ArchKind] = {k.name: k for k in (
    ArchKind("conv", "conv:C[:K]", "C channels, KxK kernel (default 3), SAME padding",
             _parse_conv, _build_conv, True,
             lambda i: f"conv:{int(i.size)}" + ("" if i.kernel in (None, 3) else f":{i.kernel}")),
    ArchKind("pool", "pool", "2x2 max pooling", _parse_none("pool"), _build_pool, True,
             lambda i: "pool"),
    ArchKind("avgpool", "avgpool", "2x2 average pooling", _parse_none("avgpool"), _build_pool,
             True, lambda i: "avgpool"),
    ArchKind("gap", "gap", "global average pooling: one mean per channel (images to flat "
             "features)", _parse_none("gap"), _build_gap, True, lambda i: "gap"),
    ArchKind("fc", "fc:N", "N units, fully connected (flattens images)", _parse_fc, _build_fc,
             False, _fmt_size),
    ArchKind("dropout", "dropout:P", "dropout with drop probability P", _parse_dropout,
             _build_dropout, False, lambda i: f"dropout:{i.size:g}"),
    ArchKind("res", "res(ENTRIES)", "residual block y = x + f(x), f the entries inside "
             "(a 1x1 projection of x when f changes the shape)", _parse_res, _build_res, False,
             lambda i: f"res({format_arch(i.body)})"),
)}

#: The grammar in one line, for error messages.
ARCH_GRAMMAR = "comma-separated " + ", ".join(k.syntax for k in KINDS.values())

#: The grammar with each kind's meaning, for ``--help``.
ARCH_HELP = "comma-separated " + "; ".join(f"{k.syntax}: {k.help}" for k in KINDS.values())


def kinds_table() -> str:
    """The kinds as a markdown table (the README's list is this table)."""
    rows = [f"| `{k.syntax}` | {k.help} |" for k in KINDS.values()]
    return "\n".join(["| entry | meaning |", "|---|---|", *rows])


# --------------------------------------------------------------------------- parsing
def _split_top(text: str) -> list[str]:
    """Split on the commas outside parentheses."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise ValueError("unbalanced ')'")
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth:
        raise ValueError("unbalanced '('")
    parts.append("".join(cur))
    return parts


def _parse_entry(token: str) -> ArchItem:
    tok = token.strip().lower()
    if "(" in tok:
        kind, _, rest = tok.partition("(")
        kind = kind.strip()
        if kind != "res" or not rest.endswith(")"):
            raise ValueError(f"only res(...) holds entries, got {token.strip()!r}")
        body = _parse_list(rest[:-1])
        if not body:
            raise ValueError("res() needs at least one entry")
        return ArchItem("res", body=body)
    kind, *args = tok.split(":")
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; valid: {', '.join(KINDS)}")
    try:
        return KINDS[kind].parse(args)
    except ValueError as e:
        raise ValueError(f"{KINDS[kind].syntax}: {e}") from None


def _parse_list(text: str) -> tuple[ArchItem, ...]:
    if not text.strip():
        return ()
    return tuple(_parse_entry(t) for t in _split_top(text))


def parse_arch(arch: str | Sequence[str | ArchItem]) -> tuple[ArchItem, ...]:
    """Parse the architecture mini-language (:data:`ARCH_GRAMMAR`) into :class:`ArchItem`\\ s.

    An empty string is no hidden layer. A sequence of entries (strings or :class:`ArchItem`)
    works too.

    Raises:
      ValueError: naming the bad entry, what is wrong with it, and the grammar.

    >>> [str(i) for i in parse_arch("conv:16:5, pool, res(conv:16,conv:16), fc:64, dropout:0.5")]
    ['conv:16:5', 'pool', 'res(conv:16,conv:16)', 'fc:64', 'dropout:0.5']
    """
    if isinstance(arch, str):
        try:
            tokens = [] if not arch.strip() else _split_top(arch)
        except ValueError as e:
            raise ValueError(f"bad architecture {arch!r}: {e}; expected {ARCH_GRAMMAR}") from None
    else:
        tokens = list(arch)
    items = []
    for tok in tokens:
        if isinstance(tok, ArchItem):
            items.append(tok)
            continue
        try:
            items.append(_parse_entry(str(tok)))
        except ValueError as e:
            raise ValueError(f"bad architecture entry {str(tok).strip()!r} in {arch!r}: {e}; "
                             f"expected {ARCH_GRAMMAR}") from None
    return tuple(items)


def format_arch(items: Sequence[ArchItem]) -> str:
    """The entries written back (``parse_arch(format_arch(items)) == items``)."""
    return ",".join(str(i) for i in items)


def needs_images(items: Sequence[ArchItem]) -> bool:
    """Whether any entry (inside ``res(...)`` too) needs image inputs."""
    return any(KINDS[i.kind].images or needs_images(i.body) for i in items)


# --------------------------------------------------------------------------- building
def _build_items(items: Sequence[ArchItem], opts: BuildOptions, image: bool):
    out: list = []
    flattened = False  # an fc entry here turned images into flat features
    for item in items:
        kind = KINDS[item.kind]
        if kind.images and not image:
            where = "after an fc entry" if flattened else "on flat features"
            raise ValueError(f"{item} needs images (height, width, channels), not {where}; "
                             "put convolutions and pooling before the fc entries")
        layers, after = kind.build(item, opts, image)
        flattened = flattened or (image and not after)
        image = after
        out += layers
    return out, image


def build_layers(items: Sequence[ArchItem], opts: BuildOptions, *,
                 image: bool) -> tuple[list, bool]:
    """The hidden layers of ``items`` (``image``: the input is ``[height, width, channels]``)
    and whether their output is still an image.

    Raises:
      ValueError: for an entry that needs images on flat features.
    """
    return _build_items(tuple(items), opts, bool(image))
