"""Scaling past one device with JAX's own machinery: a ``Mesh``, ``NamedSharding`` and ``jit``.

**Data parallelism.** :func:`data_mesh` builds a 1-D mesh whose axis ``"data"`` runs over the
devices. Every batch is split along its leading (example) axis over that axis —
``NamedSharding(mesh, P("data"))`` — so each of the D devices holds ``batch_size / D`` examples;
parameters, model state (batch-norm statistics) and optimizer state are **replicated** on every
device. The step is the ordinary single-device step under plain ``jax.jit``: the loss is a mean
over the *global* batch, so its gradient is the mean of the per-device gradients, and the XLA
partitioner inserts the all-reduce that computes it (and the one for batch-norm statistics, which
are therefore synchronized over the global batch). No ``pmap``, no hand-written ``psum``; the
numbers equal those of one device up to float summation order.

**Populations.** :func:`shard_population` splits the leading member axis of a stacked population
over a 1-D mesh axis ``"pop"``. Members are independent, so the vmapped epoch runs without any
communication.

**Several processes** (hosts, or several processes on one machine): call :func:`initialize` in
every process before anything else touches JAX; afterwards ``jax.devices()`` lists the devices of
all processes and a mesh spans them. jaxnn's epoch keeps the (small) training set **replicated**
on every device, gathers each batch from it inside the scan, and constrains the gathered batch to
``P("data")``, so each device computes only its slice and every process sees the same data order
as a one-device run. For data that does not fit on one device, a user loop can instead load only
this process's rows of each batch and assemble the global batch with :func:`global_batch`
(``jax.make_array_from_process_local_data``). On CPU, cross-process collectives use the
``gloo`` backend (``jax_cpu_collectives_implementation``, jax's default since 0.5).

Example::

    mesh = data_mesh(8)
    step = jaxnn.train.make_train_step(model.apply, "softmax_cross_entropy", opt, mesh=mesh)
    state = replicate(state, mesh)
    state, metrics = step(state, shard_batch(batch, mesh))
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = [
    "DATA_AXIS",
    "POP_AXIS",
    "initialize",
    "is_main_process",
    "resolve_devices",
    "data_mesh",
    "population_mesh",
    "replicated",
    "data_sharding",
    "replicate",
    "shard_batch",
    "global_batch",
    "constrain_batch",
    "check_batch_size",
    "shard_population",
    "memory_bytes",
    "BYTES_PER_PARAMETER",
    "check_fits",
]

#: Mesh axis over which batches are split.
DATA_AXIS = "data"
#: Mesh axis over which a population's members are split.
POP_AXIS = "pop"


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """Join a multi-process run: ``jax.distributed.initialize(coordinator, num_processes,
    process_id)``.

    Must run in every process before any other JAX call. ``coordinator`` is ``"HOST:PORT"`` of
    process 0 (which also serves it); with all three arguments ``None`` jax detects them from
    the cluster (Cloud TPU, SLURM, Open MPI). Calling it again once initialized does nothing.
    """
    if jax.distributed.is_initialized():
        return
    if coordinator is None and num_processes is None and process_id is None:
        jax.distributed.initialize()
        return
    if coordinator is None or num_processes is None or process_id is None:
        raise ValueError("a multi-process run needs coordinator, num_processes and process_id "
                         "together (or none of them, for cluster auto-detection)")
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise ValueError(f"process_id must be in [0, num_processes), got process_id={process_id}"
                         f", num_processes={num_processes}")
    host, _, port = coordinator.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"coordinator must be HOST:PORT, got {coordinator!r}")
    jax.distributed.initialize(coordinator, num_processes, process_id)


def is_main_process() -> bool:
    """True in process 0 (the one that writes files in a multi-process run)."""
    return jax.process_index() == 0


def resolve_devices(devices: int | str | None) -> int:
    """The number of devices asked for: ``None`` -> 1, ``"all"`` -> ``jax.device_count()``
    (every device of every process), an int (or its string) -> itself, checked against the
    devices that exist. Raises ``ValueError`` naming what is available."""
    available = jax.device_count()
    if devices is None:
        return 1
    if isinstance(devices, str):
        if devices.strip().lower() == "all":
            return available
        try:
            devices = int(devices)
        except ValueError:
            raise ValueError(f"devices must be a positive integer or 'all', got {devices!r}") \
                from None
    if isinstance(devices, bool) or not isinstance(devices, int | np.integer) or devices < 1:
        raise ValueError(f"devices must be a positive integer or 'all', got {devices!r}")
    if devices > available:
        hint = ""
        if jax.default_backend() == "cpu":
            hint = (f" (on CPU, set XLA_FLAGS=--xla_force_host_platform_device_count={devices} "
                    "to split the host into that many devices)")
        raise ValueError(f"asked for {devices} devices but only {available} "
                         f"{jax.default_backend()} device(s) are available{hint}")
    return int(devices)


def _mesh(devices: int | str | None, axis: str) -> Mesh:
    n = resolve_devices("all" if devices is None else devices)
    if jax.process_count() > 1 and n != jax.device_count():
        raise ValueError(f"a multi-process mesh must span every device ({jax.device_count()}), "
                         f"got devices={n}; use 'all'")
    # Auto axes: shardings are propagated by the compiler from the constraints we place.
    return jax.make_mesh((n,), (axis,), axis_types=(AxisType.Auto,),
                         devices=jax.devices()[:n])


def data_mesh(devices: int | str | None = None) -> Mesh:
    """A 1-D mesh with axis ``"data"`` over the first ``devices`` devices (``None``/``"all"``:
    every device, of every process)."""
    return _mesh(devices, DATA_AXIS)


def population_mesh(devices: int | str | None = None) -> Mesh:
    """A 1-D mesh with axis ``"pop"`` over the first ``devices`` devices."""
    return _mesh(devices, POP_AXIS)


def replicated(mesh: Mesh) -> NamedSharding:
    """``NamedSharding(mesh, P())``: a full copy on every device of ``mesh``."""
    return NamedSharding(mesh, P())


def data_sharding(mesh: Mesh) -> NamedSharding:
    """``NamedSharding(mesh, P(axis))``: the leading axis split over ``mesh``'s (first) axis —
    ``"data"`` for :func:`data_mesh`, ``"pop"`` for :func:`population_mesh`."""
    return NamedSharding(mesh, P(mesh.axis_names[0]))


def _is_key(x) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _put(x, sharding: NamedSharding):
    """Place one leaf (array, numpy array, scalar or typed PRNG key) with ``sharding``.

    Every process must pass the same global value. Across processes a process-local value goes
    through the host (``device_put`` accepts host values for shardings that span other
    processes' devices; a global array is resharded directly), and typed keys travel as their
    raw key data.
    """
    if _is_key(x):
        impl = jax.random.key_impl(x)
        return jax.random.wrap_key_data(_put(jax.random.key_data(x), sharding), impl=impl)
    if jax.process_count() > 1 and not (isinstance(x, jax.Array) and not x.is_fully_addressable):
        x = np.asarray(x)  # a process-local value: go through the host
    return jax.device_put(x, sharding)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Every leaf of ``tree`` (params, optimizer state, a whole ``TrainState``, a data set)
    replicated on every device of ``mesh``. Every process must pass the same values."""
    sharding = replicated(mesh)
    return jax.tree.map(lambda x: _put(x, sharding), tree)


def check_batch_size(batch_size: int, shards: int | Mesh) -> None:
    """Raise ``ValueError`` unless ``batch_size`` divides by the number of data shards."""
    n = math.prod(shards.shape.values()) if isinstance(shards, Mesh) else int(shards)
    if batch_size % n:
        raise ValueError(f"the batch size {batch_size} must divide by the number of data shards "
                         f"({n} devices); try {max(n, batch_size - batch_size % n)}")


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """A global batch (every leaf ``[batch_size, ...]``, the same in every process) placed with
    its leading axis split over ``mesh``: device ``d`` holds rows ``[d*b/D, (d+1)*b/D)``."""
    sharding = data_sharding(mesh)
    for leaf in jax.tree.leaves(batch):
        check_batch_size(np.shape(leaf)[0], mesh)
    return jax.tree.map(lambda x: _put(x, sharding), batch)


def global_batch(local: Any, mesh: Mesh) -> Any:
    """Assemble a global batch from each process's own rows.

    ``local`` holds this process's ``batch_size / num_processes`` consecutive rows (process
    ``i`` holds block ``i``); the result is the global ``[batch_size, ...]`` batch split over
    ``"data"``, built with ``jax.make_array_from_process_local_data`` without any copy between
    hosts. In a single process it equals :func:`shard_batch`.
    """
    sharding = data_sharding(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                        local)


def constrain_batch(batch: Any, mesh: Mesh | None) -> Any:
    """Inside ``jit``: ``with_sharding_constraint`` of every leaf's leading axis to ``"data"``
    (the identity when ``mesh`` is ``None``). Applied to a batch gathered inside a scan, it makes
    each device compute only its slice of the batch."""
    if mesh is None:
        return batch
    return jax.lax.with_sharding_constraint(batch, data_sharding(mesh))


def shard_population(tree: Any, devices: int | str | None) -> Any:
    """Place a member-stacked pytree (every leaf ``[N, ...]``) with the member axis split over a
    1-D ``"pop"`` mesh of ``devices`` devices: device ``d`` holds members
    ``[d*N/D, (d+1)*N/D)``. ``N`` must divide by the number of devices. Members never
    communicate, so a vmapped epoch over the result runs device-locally."""
    mesh = population_mesh(devices)
    n_dev = mesh.shape[POP_AXIS]
    sharding = data_sharding(mesh)
    for leaf in jax.tree.leaves(tree):
        n = np.shape(leaf)[0] if np.ndim(leaf) else None
        if n is None or n % n_dev:
            raise ValueError(f"the population size {n} must divide by devices={n_dev}")
    return jax.tree.map(lambda x: _put(x, sharding), tree)


#: Bytes per parameter while training: float32 weights, gradients and two optimizer moments.
BYTES_PER_PARAMETER = 16


def memory_bytes() -> int:
    """The memory a training step can use: the first device's limit where JAX reports one
    (accelerators), else the machine's physical memory."""
    import os

    try:
        stats = jax.devices()[0].memory_stats() or {}
        if stats.get("bytes_limit"):
            return int(stats["bytes_limit"])
    except Exception:  # a backend without memory statistics
        pass
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_fits(parameters: int, *, copies: int = 1, what: str = "the model") -> None:
    """Refuse, before anything is allocated, training that cannot fit in memory:
    :math:`\text{copies} \times \text{parameters} \times 16` bytes (weights, gradients, two
    optimizer moments) against :func:`memory_bytes`.

    Raises:
      ValueError: naming the sizes.
    """
    need, have = int(copies) * int(parameters) * BYTES_PER_PARAMETER, memory_bytes()
    if need > have:
        many = "" if copies == 1 else f" x {int(copies):,} copies"
        raise ValueError(f"{what} has {int(parameters):,} parameters{many}: {need / 2**30:.1f} "
                         f"GiB with gradients and optimizer state, more than the "
                         f"{have / 2**30:.1f} GiB of memory here")
