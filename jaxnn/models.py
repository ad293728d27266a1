r"""Models: :func:`serial` folds layers (:mod:`jaxnn.layers`) into a layer, or, given an input
shape, into a :class:`Model`; :func:`mlp` and :func:`convnet` are thin builders over it.

A :class:`Model` is a layer with its input shape: ``init(key) -> (params, state)``,
``apply(params, state, x, *, train=False, key=None, mask=None) -> (outputs, state)`` and
``trace(...)``, which is ``apply`` that also returns one :class:`~jaxnn.layers.LayerActivations`
per hidden weight matrix, so :mod:`jaxnn.train`, :mod:`jaxnn.population`, :mod:`jaxnn.diagnostics`
and checkpoints take any model.

**Model layers.** ``serial`` groups its layers into *model layers*, the curriculum's "layers":
each weighted layer (:func:`~jaxnn.layers.Dense`, :func:`~jaxnn.layers.Conv2D`,
:func:`~jaxnn.layers.Maxout`, or a block holding weights: a nested ``serial`` or a
:func:`~jaxnn.layers.Residual`) starts one, named ``"layer_0"``, ``"layer_1"``, ..., and the layers
after it (batch norm, nonlinearity, dropout, pooling) belong to it until the next weighted layer.
The params are one dict per model layer: the weighted layer's own (``{"w", "b"}``; a block's
nested dict) and, under their :attr:`~jaxnn.layers.Layer.name`, the params of the others
(``"bn"`` for batch norm, ``"alpha"`` for PReLU's slope); the state likewise. E.g.
``mlp([64, 128, 10], batch_norm=True)`` has params
``{"layer_0": {"w", "bn": {"gamma", "beta"}}, "layer_1": {"w", "b"}}``. Layers before the first
weighted layer keep what they hold under ``"input"``. A serial without weighted layers is a
plain layer of its enclosing serial (its params under ``"serial"``).

**Nesting and names.** ``serial(*layers)`` without ``input_shape`` is a
:class:`~jaxnn.layers.Layer`, so serials nest (stax's contract), and
``Residual(serial(...))`` is a residual block. A block's params sit in its model layer's dict
with its own model layers inside: ``serial(Conv2D(8), Activation("relu"),
Residual(serial(Conv2D(8), Activation("relu"), Conv2D(8))), Activation("relu"), Flatten(),
Dense(3), input_shape=...)`` has params ``{"layer_0": {"w", "b"}, "layer_1": {"layer_0": {"w",
"b"}, "layer_1": {"w", "b"}}, "layer_2": {"w", "b"}}`` (a projection adds
``"layer_1": {..., "skip": {"w"}}``). Every weight matrix is named by its path, the ``"/"``-joined
dict keys down to the dict holding its ``"w"``: ``"layer_0"``, ``"layer_1/layer_0"``,
``"layer_1/layer_1"``, (``"layer_1/skip"``), ``"layer_2"``; a residual block's projection comes
after its branch. :attr:`Model.layer_names` lists these paths input to output (a flat model's
are ``"layer_0"``, ``"layer_1"``, ... as before) and :func:`param_at` fetches the sub-tree of
params, state, gradients or updates at a path.

**Traces.** ``trace`` reports, for every weight matrix but the last (the output), its model
layer's first nonlinearity's input and output (pre-activations and activations; both the model
layer's output if it has no nonlinearity), inside nested blocks too, in the order of
:attr:`Model.layer_names`. A weight matrix that ends a block without a nonlinearity of its own
reports the first nonlinearity after the block in the enclosing model layer (ResNet's
:math:`\operatorname{relu}(x + f(x))` for a residual block's last convolution; the projection
reports its own output). Diagnostics read :attr:`Model.layer_names` and
:attr:`Model.activations`.

**Randomness.** ``init`` splits ``key`` into one key per model layer (plus one for the layers
before the first, if any); the weighted layer gets its model layer's key, the others
``fold_in(that key, position in the model layer)``. A nested serial applies the same rule to the
key its model layer gives it; a :func:`~jaxnn.layers.Residual` gives its branch that key itself
and its projection ``fold_in(key, 1)``. ``apply`` derives dropout keys from its ``key`` the same
way.

Example::

    from jaxnn.layers import BatchNorm, Conv2D, Activation, MaxPool, Flatten, Dense, Residual
    model = serial(Conv2D(32), BatchNorm(), Activation("relu"), MaxPool(),
                   Flatten(), Dense(10), input_shape=(8, 8, 1))
    params, state = model.init(jax.random.key(0))
    logits, state = model.apply(params, state, x, train=True, mask=mask)

    block = Residual(serial(Conv2D(16), BatchNorm(), Activation("relu"), Conv2D(16), BatchNorm()))
    resnet = serial(Conv2D(16), Activation("relu"), block, Activation("relu"),
                    Flatten(), Dense(10), input_shape=(8, 8, 1))

    model = convnet((8, 8, 1), 10, "conv:32,conv:32,pool,conv:64,pool,fc:128", batch_norm=True)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxnn.layers import (
    Dense,
    Flatten,
    Layer,
    LayerActivations,
    Traced,
    _check_input,
    _join,
    _report,
    _shape,
    _size,
)

__all__ = [
    "Model",
    "serial",
    "param_at",
    "parameter_count",
    "mlp",
    "convnet",
    "ArchItem",
    "ARCH_GRAMMAR",
    "DEFAULT_ARCH",
    "parse_arch",
]

#: The key of the model layer holding what layers before the first weighted layer carry.
_INPUT = "input"


class Model(NamedTuple):
    """A model: a layer with its input shape. ``init(key) -> (params, state)``;
    ``apply(params, state, x, *, train=False, key=None, mask=None) -> (outputs, state)``;
    ``trace(...)`` is ``apply`` that also returns one
    :class:`~jaxnn.layers.LayerActivations` per hidden weight matrix, nested blocks included
    (for diagnostics: dead units, saturation, activation statistics).

    Attributes (besides the three functions; all hashable, so a model can key a cache):
      input_shape, output_shape: per example (without the batch axis).
      layer_names: the weight matrices, input to output, by path (``"layer_0"``, ...,
        ``"layer_2/layer_0"`` inside a block; :func:`param_at` fetches their params). ``trace``
        reports all but the last.
      activations: the nonlinearity each one reports (``None`` for none, e.g. the output).
      layer: the :class:`~jaxnn.layers.Layer` the model wraps (``serial(*layers)``), e.g. to put
        the model inside another serial; ``serial`` takes a model as one of its layers too.
    """

    init: Callable[..., tuple[Any, Any]]
    apply: Callable[..., tuple[jax.Array, Any]]
    trace: Callable[..., tuple[jax.Array, Any, list[LayerActivations]]]
    input_shape: tuple[int, ...] = ()
    output_shape: tuple[int, ...] = ()
    layer_names: tuple[str, ...] = ()
    activations: tuple[str | None, ...] = ()
    layer: Layer | None = None


def parameter_count(model: Model) -> int:
    """The number of parameters of ``model``, from shapes alone (nothing is allocated):
    ``jax.eval_shape`` of its ``init``."""
    params, _ = jax.eval_shape(model.init, jax.random.key(0))
    return int(sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params)))


def param_at(tree: Any, path: str) -> Any:
    """The sub-tree of ``tree`` (params, state, gradients, updates) at ``path``: its
    ``"/"``-separated dict keys, as in :attr:`Model.layer_names` (``""``: ``tree`` itself).

    >>> param_at({"layer_1": {"layer_0": {"w": 1}, "skip": {"w": 2}}}, "layer_1/skip")
    {'w': 2}

    Raises:
      KeyError: naming the missing part of the path.
    """
    node = tree
    for i, part in enumerate(path.split("/") if path else ()):
        if not isinstance(node, Mapping) or part not in node:
            where = "/".join(path.split("/")[:i]) or "the top level"
            raise KeyError(f"param_at: no {part!r} at {where} of path {path!r}")
        node = node[part]
    return node


class _Slot(NamedTuple):
    """Where one layer of a serial model keeps its params/state: model layer ``block`` (-1:
    before the first weighted layer), under ``name`` (``None``: the model layer's own dict, for
    weighted layers), at position ``pos`` in the model layer."""

    block: int
    name: str | None
    pos: int


def _plan(layers: Sequence[Layer]) -> tuple[list[_Slot], int]:
    plan, block, pos, used = [], -1, 0, set()
    for layer in layers:
        if layer.weighted:
            block, pos, used = block + 1, 0, set()
            plan.append(_Slot(block, None, 0))
            continue
        pos += 1
        name, i = layer.name, 1
        while name in used:
            name, i = f"{layer.name}_{i}", i + 1
        used.add(name)
        plan.append(_Slot(block, name, pos))
    return plan, block + 1


def _as_layers(layers: Sequence[Any]) -> list[Layer]:
    if not layers:
        raise ValueError("serial: give at least one layer")
    out = []
    for i, layer in enumerate(layers):
        if isinstance(layer, Model) and isinstance(layer.layer, Layer):
            layer = layer.layer
        if not isinstance(layer, Layer):
            raise ValueError(f"serial: layer {i} must be a jaxnn.layers.Layer, got {layer!r}")
        out.append(layer)
    return out


def _serial_layer(layers: Sequence[Layer]) -> tuple[Layer, Callable]:
    """The serial layer of ``layers`` and its ``forward(params, state, x, train, key, mask,
    record) -> (y, state, [Traced, ...], first nonlinearity's LayerActivations or None)``."""
    plan, n_blocks = _plan(layers)
    has_input = plan[0].block < 0
    names = tuple(f"layer_{i}" for i in range(n_blocks))
    block_slots = [frozenset(s.name for s in plan if s.block == b and s.name) for b in
                   range(n_blocks)]

    def block_name(b: int) -> str:
        return names[b] if b >= 0 else _INPUT

    def layer_keys(key):
        keys = jax.random.split(key, n_blocks + has_input)
        return [keys[s.block] if s.name is None else
                jax.random.fold_in(keys[s.block if s.block >= 0 else n_blocks], s.pos)
                for s in plan]

    def init_with_shapes(key, in_shape):
        params, state, shapes = {}, {}, []
        shape = in_shape
        for i, (layer, slot, k) in enumerate(zip(layers, plan, layer_keys(key), strict=True)):
            shape, p, s = layer.init(k, shape)
            shape = tuple(int(d) for d in shape)
            if not shape or min(shape) < 1:
                raise ValueError(f"serial: layer {i} ({layer.name}) gives an empty output shape "
                                 f"{shape} from input {shapes[-1] if shapes else in_shape}")
            shapes.append(shape)
            name = block_name(slot.block)
            if slot.name is None:
                if not isinstance(p, dict) or not isinstance(s, dict):
                    raise ValueError(f"serial: weighted layer {i} ({layer.name}) must keep its "
                                     "params and state in dicts")
                clash = (set(p) | set(s)) & block_slots[slot.block]
                if clash:
                    raise ValueError(f"serial: layer {i} ({layer.name}) has params named "
                                     f"{sorted(clash)}, which other layers of {name} use")
                params[name], state[name] = dict(p), dict(s)
                continue
            if jax.tree.leaves(p):
                params.setdefault(name, {})[slot.name] = p
            if jax.tree.leaves(s):
                state.setdefault(name, {})[slot.name] = s
        return params, state, shapes

    def init(key, input_shape):
        params, state, shapes = init_with_shapes(key, _shape(input_shape, "serial"))
        return shapes[-1], params, state

    def forward(params, state, x, train, key, mask, record):
        h = jnp.asarray(x)
        keys = layer_keys(key) if key is not None else [None] * len(layers)
        new_state = {k: dict(v) for k, v in state.items()}
        entries: list[Traced] = []
        pending: list[int] = []  # entries of this model layer waiting for its nonlinearity
        found = False  # this model layer's first nonlinearity has been traced
        first = None  # the first nonlinearity's LayerActivations (a weightless serial's trace)
        for layer, slot, k in zip(layers, plan, keys, strict=True):
            name = block_name(slot.block)
            kw = dict(train=train, key=k, mask=mask)
            if slot.name is None:
                for i in pending:  # close the previous model layer: its output
                    entries[i] = entries[i]._replace(acts=LayerActivations(h, h), open=False)
                own = block_slots[slot.block]
                p = {n: v for n, v in params[name].items() if n not in own}
                s = {n: v for n, v in state[name].items() if n not in own}
                if record:
                    h, s, sub = _report(layer, p, s, h, **kw)
                    pending = [len(entries) + j for j, e in enumerate(sub) if e.open]
                    entries += [e._replace(path=_join(name, e.path)) for e in sub]
                    found = not pending
                else:
                    h, s = layer.apply(p, s, h, **kw)
                new_state[name].update(s)
                continue
            p = params.get(name, {}).get(slot.name, {})
            s = state.get(name, {}).get(slot.name, {})
            if record and layer.trace is not None and not found:
                h, s, acts = layer.trace(p, s, h, **kw)
                first = acts if first is None else first
                for i in pending:
                    entries[i] = entries[i]._replace(acts=acts, activation=layer.activation,
                                                     open=False)
                pending, found = [], True
            else:
                h, s = layer.apply(p, s, h, **kw)
            if slot.name in state.get(name, {}):
                new_state[name][slot.name] = s
        for i in pending:  # the last model layer has no nonlinearity: its output, still open
            entries[i] = entries[i]._replace(acts=LayerActivations(h, h))
        return h, new_state, entries, first

    def apply(params, state, x, *, train=False, key=None, mask=None):
        y, new_state, _, _ = forward(params, state, x, train, key, mask, record=False)
        return y, new_state

    def report(params, state, x, *, train=False, key=None, mask=None):
        y, new_state, entries, _ = forward(params, state, x, train, key, mask, record=True)
        return y, new_state, entries

    weighted = n_blocks > 0
    nonlinear = next((layer for layer in layers if layer.trace is not None), None)
    trace = None
    if not weighted and nonlinear is not None:  # weightless: it reports its first nonlinearity
        def trace(params, state, x, *, train=False, key=None, mask=None):
            y, new_state, _, first = forward(params, state, x, train, key, mask, record=True)
            return y, new_state, first if first is not None else LayerActivations(y, y)

    layer = Layer(init, apply, name="serial", weighted=weighted, trace=trace,
                  activation=nonlinear.activation if trace is not None else None,
                  report=report if weighted else None)
    return layer, forward


def serial(*layers: Layer | Model, input_shape: Sequence[int] | int | None = None
           ) -> Layer | Model:
    """Fold ``layers`` into one layer, or, with ``input_shape``, into a :class:`Model` for
    inputs ``[batch, *input_shape]``.

    ``serial(*layers)`` is a :class:`~jaxnn.layers.Layer` (stax's "returns a new layer"):
    ``init(key, input_shape) -> (output_shape, params, state)``,
    ``apply(params, state, x, *, train=False, key=None, mask=None) -> (y, state)``, the layers
    applied in turn, :math:`y = f_n(\\cdots f_1(x))`; it goes inside another ``serial`` or a
    :func:`~jaxnn.layers.Residual` (one model layer there, its params a nested dict). A
    :class:`Model` is accepted as a layer (its :attr:`Model.layer`).

    ``serial(*layers, input_shape=...)`` is that layer as a :class:`Model`, with the params
    layout, key rule and layer names of :mod:`jaxnn.models`. Shapes are checked then, once,
    without computing anything (:func:`jax.eval_shape` of ``init``, ``apply`` and ``trace``): a
    layer that does not fit its input (a convolution after a flatten, pooling an image smaller
    than the window, a residual branch changing the shape in a way no projection undoes) is a
    ``ValueError`` naming it.

    Raises:
      ValueError: for no layers, something that is not a layer, a bad ``input_shape``, or layers
        that do not fit together.
    """
    layer, forward = _serial_layer(_as_layers(layers))
    if input_shape is None:
        return layer
    return _model(layer, forward, _shape(input_shape, "serial"))


def _model(layer: Layer, forward: Callable, in_shape: tuple[int, ...]) -> Model:
    """The :class:`Model` of a serial ``layer`` (its ``forward``) on inputs ``in_shape``."""

    def init(key):
        _, params, state = layer.init(key, in_shape)
        return params, state

    def apply(params, state, x, *, train=False, key=None, mask=None):
        x = jnp.asarray(x)
        _check_input(x, in_shape, "serial")
        y, new_state, _, _ = forward(params, state, x, train, key, mask, record=False)
        return y, new_state

    def report(params, state, x, *, train=False, key=None, mask=None):
        x = jnp.asarray(x)
        _check_input(x, in_shape, "serial")
        y, new_state, entries, _ = forward(params, state, x, train, key, mask, record=True)
        return y, new_state, entries

    def trace(params, state, x, *, train=False, key=None, mask=None):
        y, new_state, entries = report(params, state, x, train=train, key=key, mask=mask)
        return y, new_state, [e.acts for e in entries[:-1]]

    # Shapes, checked once without computing: the declared output against what apply and trace
    # give; the names of the weight matrices come from the trace.
    found: dict[str, Any] = {}

    def check(key):
        out, params, state = layer.init(key, in_shape)
        x = jnp.zeros((1, *in_shape), jnp.float32)
        y, _ = apply(params, state, x)
        y_traced, _, entries = report(params, state, x)
        found["out"] = tuple(int(d) for d in out)
        found["names"] = tuple(e.path for e in entries)
        found["activations"] = tuple(e.activation for e in entries)
        for got in (y, y_traced):
            if tuple(got.shape[1:]) != found["out"]:
                raise ValueError(f"serial: the layers declare an output shape {found['out']} but "
                                 f"compute {tuple(got.shape[1:])}")

    jax.eval_shape(check, jax.random.key(0))
    return Model(init, apply, trace, in_shape, found["out"], found["names"],
                 found["activations"], layer)


# --------------------------------------------------------------------------- builders
def mlp(
    sizes: Sequence[int],
    *,
    activation: str = "relu",
    init: Any = "he_normal",
    bias_init: Any = 0.0,
    batch_norm: bool = False,
    dropout: float = 0.0,
    num_pieces: int = 2,
    bn_momentum: float = 0.9,
    prelu_init: float = 0.25,
) -> Model:
    """A multilayer perceptron ``sizes = [in, hidden..., out]``, built with :func:`serial`.

    Each hidden layer is ``Dense -> [BatchNorm] -> Activation(activation) -> [Dropout]`` (batch
    norm after the affine map and before the nonlinearity, without the then useless bias); the
    last layer is a plain ``Dense`` giving scores. ``activation="maxout"`` gives each hidden
    layer ``num_pieces`` affine pieces per unit (:func:`jaxnn.activations.maxout` over
    consecutive columns, as :func:`~jaxnn.layers.Maxout`); ``"prelu"`` gives each a learnable
    per-unit slope ``alpha`` (initially ``prelu_init``). ``init`` / ``bias_init`` are the
    weight and bias initializers (``bias_init=0.01``: the "slightly positive ReLU bias"). Every
    option is keyword-only: ``mlp([64, 128, 10], activation="tanh")``.

    Params are ``{"layer_0": {"w", "b" | "bn", ["alpha"]}, ...}`` (see :mod:`jaxnn.models`).

    Example::

        model = mlp([64, 128, 10])
        params, state = model.init(jax.random.key(0))
        logits, state = model.apply(params, state, x)
    """
    try:
        given = list(sizes)
    except TypeError:
        given = [None]
    if any(_size(s) is None for s in given):  # 4.5 is not truncated to 4, nor True taken as 1
        raise ValueError(f"mlp: sizes must be integers [in, hidden..., out], got {sizes!r}")
    sizes = [_size(s) for s in given]
    if len(sizes) < 2 or min(sizes) < 1:
        raise ValueError(f"mlp: sizes must list at least an input and an output size >= 1, got "
                         f"{sizes}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"mlp: dropout must be a drop probability in [0, 1), got {dropout}")
    return convnet((sizes[0],), sizes[-1], [ArchItem("fc", w) for w in sizes[1:-1]],
                   activation=activation, init=init, bias_init=bias_init,
                   batch_norm=batch_norm, dropout=dropout, num_pieces=num_pieces,
                   bn_momentum=bn_momentum, prelu_init=prelu_init)


# --------------------------------------------------------------------------- architectures
# The --arch mini-language and its table of kinds live in jaxnn.arch; these names are re-exported.
from jaxnn.arch import ARCH_GRAMMAR, DEFAULT_ARCH, ArchItem, parse_arch  # noqa: E402


def convnet(
    input_shape: Sequence[int],
    num_classes: int,
    arch: str | Sequence[str | ArchItem] = DEFAULT_ARCH,
    *,
    activation: str = "relu",
    init: Any = "he_normal",
    bias_init: Any = 0.0,
    batch_norm: bool = False,
    dropout: float = 0.0,
    num_pieces: int = 2,
    bn_momentum: float = 0.9,
    prelu_init: float = 0.25,
) -> Model:
    """A model from the architecture mini-language (:mod:`jaxnn.arch`): the hidden layers of
    ``arch``, then the output ``Dense(num_classes)`` (after a :func:`~jaxnn.layers.Flatten` if
    the last hidden layer still gives images).

    Each ``conv:C[:K]`` is ``Conv2D(C, K) -> [BatchNorm] -> Activation``; ``pool`` / ``avgpool``
    a 2x2 :func:`~jaxnn.layers.MaxPool` / :func:`~jaxnn.layers.AvgPool`; ``fc:N`` is
    ``Dense(N) -> [BatchNorm] -> Activation -> [Dropout(dropout)]`` (after a ``Flatten`` if the
    input is still an image); ``dropout:P`` a :func:`~jaxnn.layers.Dropout`; ``res(...)`` a
    :func:`~jaxnn.layers.Residual` around the entries inside. The other options are
    :func:`mlp`'s; with only ``fc`` entries (and flat inputs) the model is
    ``mlp([in, N..., num_classes], ...)``, the same for the same key.

    Args:
      input_shape: one example's shape: ``(height, width, channels)`` (NHWC) for
        convolutions, ``(features,)`` for fully connected layers only.
      num_classes: outputs of the last layer.
      arch: the hidden layers (default :data:`DEFAULT_ARCH`).

    Raises:
      ValueError: for a bad ``arch`` (with the grammar), a convolution or pooling on flat inputs
        or after an ``fc`` entry, or an image pooled below 1x1.

    Example::

        model = convnet((8, 8, 1), 10, "conv:16,res(conv:16,conv:16),pool,fc:64")
    """
    from jaxnn import arch as _arch

    items = parse_arch(arch)
    shape = (int(input_shape),) if isinstance(input_shape, int) else tuple(input_shape)
    if int(num_classes) < 1:
        raise ValueError(f"convnet: num_classes must be >= 1, got {num_classes}")
    options = _arch.activation_options(activation, num_pieces=num_pieces,
                                       prelu_init=prelu_init)
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"convnet: dropout must be a drop probability in [0, 1), got {dropout}")
    opts = _arch.BuildOptions(activation=activation, options=options, init=init,
                              bias_init=bias_init, batch_norm=batch_norm,
                              bn_momentum=bn_momentum, dropout=dropout)
    image = len(shape) == 3
    try:
        layers, image = _arch.build_layers(items, opts, image=image)
    except ValueError as e:
        raise ValueError(f"convnet: {e}" + ("" if image or len(shape) == 3 else
                                            f" (inputs of shape {shape})")) from None
    if image:
        layers.append(Flatten())
    layers.append(Dense(int(num_classes), init=init, bias_init=bias_init))
    try:
        return serial(*layers, input_shape=shape)
    except ValueError as e:
        raise ValueError(f"convnet: arch {_arch.format_arch(items)!r} does not fit inputs of "
                         f"shape {shape}: {e}") from None
