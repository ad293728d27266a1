r"""The curriculum's demonstrations, reproducible with one call each.

- :func:`init_depth`: unit-Gaussian data through a deep stack of ``tanh`` or ``relu`` layers with
  a given weight initializer, and what happens to the activations layer by layer. The five
  classic configurations are :data:`INIT_DEPTH_CONFIGS`: with tanh, ``N(0, 0.01)`` weights make
  the activations collapse to 0, ``N(0, 1)`` weights saturate them at :math:`\pm 1`, and
  LeCun's :math:`\operatorname{Var}(W) = 1/n` (the curriculum's "Xavier") keeps them healthy;
  with ReLU, :math:`1/n` halves the variance at every layer while He's :math:`2/n` keeps it.
- :func:`activation_comparison`: the same MLP on the same data with each activation (and each
  initializer), every (activation, init) group trained as one population over seeds:
  final validation accuracy (mean and spread), learning curves, dead-ReLU fraction over training.
- :func:`loss_comparison`: the multiclass hinge loss against softmax cross-entropy, on the same
  scores (hinge is exactly 0, with zero gradient, once the margins are met; cross-entropy is never
  satisfied) and in training (same model, same data: the hinge-trained model stops pushing its
  margins, the cross-entropy one keeps going).

Example::

    stats = init_depth("tanh", jaxnn.initializers.normal(0.01), key=jax.random.key(0))
    [round(s.std, 4) for s in stats]   # 0.21, 0.048, 0.011, ... -> 0
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from jaxnn import activations as _activations
from jaxnn import initializers as _init
from jaxnn import layers as _layers
from jaxnn import losses as _losses
from jaxnn import optim as _optim
from jaxnn import population as _population
from jaxnn.diagnostics import LayerStats, dead_fraction, dead_fraction_probe, saturated_fraction

__all__ = [
    "DepthConfig",
    "INIT_DEPTH_CONFIGS",
    "ACTIVATIONS",
    "ComparisonRow",
    "ScoreSweep",
    "LossRow",
    "LossComparison",
    "init_depth",
    "activation_comparison",
    "score_sweep",
    "loss_comparison",
]


# --------------------------------------------------------------------------- init vs depth
class DepthConfig(NamedTuple):
    """One configuration of :func:`init_depth`: a display ``label``, the ``activation`` name, the
    initializer ``init`` and its name ``init_name``."""

    label: str
    activation: str
    init: Callable[..., jax.Array]
    init_name: str


#: The curriculum's five (activation, initializer) configurations, in its order.
INIT_DEPTH_CONFIGS: tuple[DepthConfig, ...] = (
    DepthConfig("tanh + N(0, 0.01)", "tanh", _init.normal(0.01), "normal(0.01)"),
    DepthConfig("tanh + N(0, 1)", "tanh", _init.normal(1.0), "normal(1.0)"),
    DepthConfig("tanh + Xavier 1/n", "tanh", _init.lecun_normal(), "lecun_normal"),
    DepthConfig("relu + Xavier 1/n", "relu", _init.lecun_normal(), "lecun_normal"),
    DepthConfig("relu + He 2/n", "relu", _init.he_normal(), "he_normal"),
)


def init_depth(
    activation: str,
    init: str | Callable[..., jax.Array],
    *,
    key: jax.Array,
    depth: int = 10,
    width: int = 500,
    num_examples: int = 1000,
    keep_activations: bool = True,
    kernel_size: int | None = None,
    image_size: int = 8,
) -> list[LayerStats]:
    r"""Push unit-Gaussian data through ``depth`` layers ``h <- activation(h @ W)`` (no bias).

    Reproducible from ``key`` alone: with ``k_x, k_1, ..., k_depth = jax.random.split(key,
    depth + 1)``, the input is ``jax.random.normal(k_x, (num_examples, width))`` and layer
    ``l``'s weights are ``init(k_l, (width, width))``. Computed in float32 in one jitted scan.

    With ``kernel_size=k`` the layers are convolutions instead: ``h <- activation(conv(h, W))``,
    ``k x k``, stride 1, SAME padding, on unit-Gaussian NHWC images
    ``jax.random.normal(k_x, (num_examples, image_size, image_size, width))`` with ``width``
    channels, and ``W = init(k_l, (k, k, width, width))`` (HWIO): the fans include the receptive
    field, ``n_in = k * k * width``, so the same initializers keep the same scale. Dead units
    are counted per channel (zero at every position of every example).

    Args:
      activation: an activation name (``"tanh"``, ``"relu"``, ...).
      init: an initializer or its name (see :mod:`jaxnn.initializers`).
      key: the PRNG key.
      depth, width, num_examples: the network's depth and width (channels for convolutions)
        and the batch size.
      keep_activations: return each layer's activations (``[num_examples, width]`` numpy
        arrays, or ``[num_examples, image_size, image_size, width]``; e.g. for
        :func:`jaxnn.plots.histogram_grid`).
      kernel_size: convolutions with this kernel size instead of dense layers (``None``).
      image_size: height and width of the images, for convolutions.

    Returns:
      One :class:`jaxnn.diagnostics.LayerStats` per layer (``name`` ``"layer_1"`` ...):
      ``pre_mean``/``pre_std`` of ``h @ W``, ``mean``/``std`` of the activations,
      ``saturated`` (:func:`jaxnn.diagnostics.saturated_fraction`) and ``dead``
      (:func:`jaxnn.diagnostics.dead_fraction`); no gradient numbers (NaN).
    """
    for name, v in (("depth", depth), ("width", width), ("num_examples", num_examples),
                    ("kernel_size", 1 if kernel_size is None else kernel_size),
                    ("image_size", image_size)):
        if int(v) < 1:
            raise ValueError(f"init_depth: {name} must be >= 1, got {v}")
    if not _activations.entry(activation).elementwise:  # ValueError for an unknown name
        raise ValueError(f"init_depth: {activation!r} has parameters of its own or changes the "
                         "width; use an elementwise activation such as 'tanh' or 'relu'")
    act = _activations.get(activation)
    init_fn = _init.get(init)

    @jax.jit
    def run(key):
        k_x, *k_layers = jax.random.split(key, depth + 1)
        if kernel_size is None:
            h = jax.random.normal(k_x, (num_examples, width), jnp.float32)
        else:
            h = jax.random.normal(k_x, (num_examples, image_size, image_size, width), jnp.float32)

        def linear(h, k):
            if kernel_size is None:
                return h @ init_fn(k, (width, width), jnp.float32)
            w = init_fn(k, (kernel_size, kernel_size, width, width), jnp.float32)
            return jax.lax.conv_general_dilated(h, w, (1, 1), "SAME",
                                                dimension_numbers=("NHWC", "HWIO", "NHWC"))

        def layer(h, k):
            pre = linear(h, k)
            post = act(pre)
            stats = (jnp.mean(pre), jnp.std(pre), jnp.mean(post), jnp.std(post),
                     saturated_fraction(post, activation), dead_fraction(post))
            return post, (stats, post if keep_activations else None)

        _, out = jax.lax.scan(layer, h, jnp.stack(k_layers))
        return out

    stats, posts = jax.device_get(run(key))
    return [
        LayerStats(f"layer_{l + 1}", *(float(s[l]) for s in stats),
                   activations=None if posts is None else np.asarray(posts[l]))
        for l in range(depth)
    ]


# --------------------------------------------------------------------------- activations
#: The activations :func:`activation_comparison` covers by default.
ACTIVATIONS = ("relu", "leaky_relu", "elu", "tanh", "sigmoid", "swish", "maxout")


class ComparisonRow(NamedTuple):
    """One (activation, init) group of :func:`activation_comparison`.

    Attributes:
      activation, init: the group.
      val_acc_mean, val_acc_std: final validation accuracy over the seeds (each member's last
        healthy epoch).
      dead_fraction: final dead-unit fraction (mean over seeds) on the probe batch.
      val_acc, train_loss, dead_fraction_curve: per-epoch means over the seeds (learning curves).
      val_acc_per_seed: each seed's final validation accuracy.
      status: each member's status (:class:`jaxnn.train.Status`: ``"ok"``, ``"diverged"``,
        ``"stopped"``).
    """

    activation: str
    init: str
    val_acc_mean: float
    val_acc_std: float
    dead_fraction: float
    val_acc: list[float]
    train_loss: list[float]
    dead_fraction_curve: list[float]
    val_acc_per_seed: list[float]
    status: list[str]


def _mean_std(values) -> tuple[float, float]:
    """Mean and std over the finite values (members that diverged before any healthy epoch have
    none); NaN if there are none."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    return (float(v.mean()), float(v.std())) if v.size else (float("nan"), float("nan"))


def _curve(history, name) -> list[float]:
    """Mean over members per epoch, ignoring members that stopped (NaN)."""
    return [_mean_std(r)[0] for r in np.asarray(history[name], np.float64)]


def _n_inputs(data) -> int:
    return int(np.prod(np.asarray(data.x_train).shape[1:]))


def _seeds(seeds: int) -> np.ndarray:
    if int(seeds) < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    return np.arange(int(seeds))


def activation_comparison(
    data,
    *,
    key: jax.Array,
    activations: Sequence[str] = ACTIVATIONS,
    inits: Sequence[str] = ("he_normal",),
    epochs: int = 10,
    seeds: int = 3,
    hidden: Sequence[int] = (64, 64),
    learning_rate: float = 0.05,
    optimizer: optax.GradientTransformation | None = None,
    batch_size: int = 64,
    loss: str | Callable = "softmax_cross_entropy",
    l2: float = 0.0,
    bias_init: float = 0.0,
    batch_norm: bool = False,
    dropout: float = 0.0,
    probe_examples: int = 256,
    on_group: Callable[[ComparisonRow], None] | None = None,
    model: Callable[[str, str], Any] | None = None,
) -> list[ComparisonRow]:
    """Train the same MLP on the same data with every (activation, init) pair.

    Each pair is one population (:func:`jaxnn.population.train_population`) of ``seeds``
    members with seeds ``0 .. seeds-1``: different activations cannot share one vmap, the seeds
    can. Every group sees the same ``key``, so seed ``i`` has the same data order in every group.
    The dead-unit fraction of the hidden layers is measured after every epoch on the first
    ``probe_examples`` validation examples (:func:`jaxnn.diagnostics.dead_fraction_probe`).

    Args:
      data: a :class:`jaxnn.data.Dataset` with flat features.
      key: the base PRNG key.
      activations: activation names; ``"maxout"`` makes maxout layers (two pieces).
      inits: initializer names (each paired with every activation).
      epochs, batch_size, loss, l2: training settings shared by every group.
      seeds: members per group.
      hidden: hidden layer widths.
      learning_rate: every member's learning rate.
      optimizer: an optimizer from :mod:`jaxnn.optim` (default ``momentum``).
      bias_init, batch_norm, dropout: as in :func:`jaxnn.layers.mlp`.
      probe_examples: size of the batch the dead fraction is measured on.
      on_group: called with each row as soon as its group is done (progress reporting).
      model: ``model(activation, init) -> Model`` builds each pair's model (any architecture,
        e.g. ``lambda a, i: jaxnn.config.build_model(cfg.replace(activation=a, init=i), ...)``);
        default: the MLP of ``hidden``, ``bias_init``, ``batch_norm`` and ``dropout``.

    Returns:
      One :class:`ComparisonRow` per pair, activations outer, inits inner.
    """
    if not activations or not inits:
        raise ValueError("activation_comparison: give at least one activation and one init")
    for a in activations:
        if a not in _activations.names():
            raise ValueError(f"unknown activation {a!r}; valid: "
                             f"{', '.join(_activations.names())}")
    for i in inits:
        _init.get(i)  # a ValueError naming the valid initializers
    seed_ids = _seeds(seeds)
    optimizer = _optim.momentum(learning_rate) if optimizer is None else optimizer
    sizes = [_n_inputs(data), *[int(h) for h in hidden], int(data.num_classes)]
    make = model if model is not None else (
        lambda a, i: _layers.mlp(sizes, activation=a, init=i, bias_init=bias_init,
                                 batch_norm=batch_norm, dropout=dropout))
    x_probe = jnp.asarray(data.x_val[:probe_examples])
    if x_probe.shape[0] == 0:
        x_probe = jnp.asarray(data.x_train[:probe_examples])
    rows = []
    for activation in activations:
        for init in inits:
            net = make(activation, init)
            res = _population.train_population(
                data=data, epochs=epochs, batch_size=batch_size, key=key, model=net,
                loss=loss, optimizer=optimizer, probe=dead_fraction_probe(net, x_probe),
                hparams={"learning_rate": np.full(seed_ids.size, learning_rate),
                         "l2": np.full(seed_ids.size, l2), "seed": seed_ids},
            )
            final = np.asarray(res.final["val_acc"], np.float64)
            acc_mean, acc_std = _mean_std(final)
            dead = _curve(res.history, "dead_fraction")
            row = ComparisonRow(
                activation=activation, init=str(init), val_acc_mean=acc_mean,
                val_acc_std=acc_std, dead_fraction=dead[-1], val_acc=_curve(res.history, "val_acc"),
                train_loss=_curve(res.history, "train_loss"), dead_fraction_curve=dead,
                val_acc_per_seed=[float(v) for v in final], status=list(res.status),
            )
            rows.append(row)
            if on_group is not None:
                on_group(row)
    return rows


# --------------------------------------------------------------------------- losses
class ScoreSweep(NamedTuple):
    """Both losses, and their derivative with respect to the correct class's score, as that
    score grows while the other scores stay fixed (see :func:`score_sweep`)."""

    correct_score: np.ndarray
    other_scores: tuple[float, ...]
    hinge: np.ndarray
    hinge_grad: np.ndarray
    cross_entropy: np.ndarray
    cross_entropy_grad: np.ndarray


class LossRow(NamedTuple):
    """One training loss of :func:`loss_comparison`.

    Attributes:
      loss: the loss trained with.
      val_acc_mean, val_acc_std: final validation accuracy over the seeds.
      margin: final mean margin :math:`s_y - \\max_{k \\ne y} s_k` on the probe batch.
      val_acc, train_loss: learning curves (means over the seeds; ``train_loss`` is in the
        row's own loss).
      margin_curve: the mean margin per epoch.
      satisfied_curve: per epoch, the fraction of probe examples whose hinge loss is exactly 0
        (every margin met by at least 1).
      cross_entropy_curve, hinge_curve: per epoch, both losses of the model on the probe batch,
        whichever it was trained with.
    """

    loss: str
    val_acc_mean: float
    val_acc_std: float
    margin: float
    val_acc: list[float]
    train_loss: list[float]
    margin_curve: list[float]
    satisfied_curve: list[float]
    cross_entropy_curve: list[float]
    hinge_curve: list[float]


class LossComparison(NamedTuple):
    """What :func:`loss_comparison` returns: the score sweep and one row per training loss."""

    sweep: ScoreSweep
    rows: list[LossRow]


def score_sweep(
    correct_scores: ArrayLike | None = None, *, other_scores: Sequence[float] = (1.0, -1.0)
) -> ScoreSweep:
    r"""Hinge loss and cross-entropy of one example, and their gradients with respect to the
    correct class's score :math:`s_y`, as :math:`s_y` sweeps ``correct_scores`` (default
    :math:`-3 .. 6`) with the other scores fixed at ``other_scores``.

    The curriculum's point: once :math:`s_y \ge \max_k s_k + 1` the hinge loss is exactly 0 and
    so is its gradient (the example no longer matters), while cross-entropy keeps a positive loss
    and a negative gradient: it always wants :math:`s_y` higher.
    """
    s = np.linspace(-3.0, 6.0, 181) if correct_scores is None else np.asarray(correct_scores)
    others = jnp.asarray(other_scores, jnp.float32)
    label = jnp.zeros((1,), jnp.int32)

    def losses_at(sy):
        scores = jnp.concatenate([sy[None], others])[None, :]
        return (_losses.multiclass_hinge_loss(scores, label)[0],
                _losses.softmax_cross_entropy(scores, label)[0])

    @jax.jit
    def run(ss):
        vals = jax.vmap(losses_at)(ss)
        grads = jax.vmap(jax.jacfwd(losses_at))(ss)
        return vals, grads

    (hinge, ce), (hinge_g, ce_g) = jax.device_get(run(jnp.asarray(s, jnp.float32)))
    return ScoreSweep(np.asarray(s, np.float64), tuple(float(o) for o in other_scores),
                      np.asarray(hinge), np.asarray(hinge_g), np.asarray(ce), np.asarray(ce_g))


def _margin_probe(model, x, y):
    """Probe: mean margin, fraction with every hinge margin met, and both losses on (x, y)."""
    x, y = jnp.asarray(x), jnp.asarray(y)

    def probe(params, model_state):
        s, _ = model.apply(params, model_state, x, train=False)
        correct = jnp.take_along_axis(s, y[:, None], axis=1)[:, 0]
        others = jnp.where(jax.nn.one_hot(y, s.shape[-1], dtype=bool), -jnp.inf, s)
        hinge = _losses.multiclass_hinge_loss(s, y)
        return {
            "margin": jnp.mean(correct - jnp.max(others, axis=-1)),
            "satisfied": jnp.mean((hinge == 0).astype(jnp.float32)),
            "hinge": jnp.mean(hinge),
            "cross_entropy": jnp.mean(_losses.softmax_cross_entropy(s, y)),
        }

    return probe


def loss_comparison(
    data,
    *,
    key: jax.Array,
    losses: Sequence[str] = ("multiclass_hinge_loss", "softmax_cross_entropy"),
    epochs: int = 10,
    seeds: int = 2,
    hidden: Sequence[int] = (64,),
    activation: str = "relu",
    init: str = "he_normal",
    learning_rate: float = 0.05,
    optimizer: optax.GradientTransformation | None = None,
    batch_size: int = 64,
    l2: float = 0.0,
    probe_examples: int = 512,
    other_scores: Sequence[float] = (1.0, -1.0),
    model: Any = None,
    on_epoch: Callable[[str, int, dict], None] | None = None,
) -> LossComparison:
    """Hinge loss against cross-entropy, on the same scores and in training.

    The scores part is :func:`score_sweep`. The training part trains the same MLP on the same
    data (same seeds, hence the same initial weights and data order) once per loss, each as a
    population over ``seeds`` (:func:`jaxnn.population.train_population`), and tracks on the
    first ``probe_examples`` training examples the mean margin, the fraction of examples whose
    hinge loss is 0, and both losses. ``model`` (any :class:`jaxnn.models.Model` for the data)
    replaces the MLP of ``hidden``, ``activation`` and ``init``. ``on_epoch(loss, epoch, metrics)``
    is called after every epoch of each loss's population (progress reporting; ``metrics`` as in
    :func:`jaxnn.population.train_population`'s ``on_epoch``).
    """
    for name in losses:
        _losses.get(name)
    seed_ids = _seeds(seeds)
    optimizer = _optim.momentum(learning_rate) if optimizer is None else optimizer
    if model is None:
        model = _layers.mlp([_n_inputs(data), *[int(h) for h in hidden],
                             int(data.num_classes)], activation=activation, init=init)
    probe = _margin_probe(model, data.x_train[:probe_examples], data.y_train[:probe_examples])
    rows = []
    for name in losses:
        res = _population.train_population(
            data=data, epochs=epochs, batch_size=batch_size, key=key, model=model, loss=name,
            optimizer=optimizer, probe=probe,
            hparams={"learning_rate": np.full(seed_ids.size, learning_rate),
                     "l2": np.full(seed_ids.size, l2), "seed": seed_ids},
            on_epoch=None if on_epoch is None else (
                lambda epoch, metrics, trained, name=name: on_epoch(name, epoch, metrics)),
        )
        acc_mean, acc_std = _mean_std(res.final["val_acc"])
        margin = _curve(res.history, "margin")
        rows.append(LossRow(
            loss=name, val_acc_mean=acc_mean, val_acc_std=acc_std, margin=margin[-1], val_acc=_curve(res.history, "val_acc"),
            train_loss=_curve(res.history, "train_loss"), margin_curve=margin,
            satisfied_curve=_curve(res.history, "satisfied"),
            cross_entropy_curve=_curve(res.history, "cross_entropy"),
            hinge_curve=_curve(res.history, "hinge"),
        ))
    return LossComparison(score_sweep(other_scores=other_scores), rows)

