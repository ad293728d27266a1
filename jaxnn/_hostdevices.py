"""One CPU device per core, for the verbs that train populations (``search``, ``ensemble``).

XLA runs a program of small matrix products on one core: a vmapped population of small models
(digits-sized MLPs) keeps one core busy and leaves the others idle. Splitting the host into one
JAX device per core (``jax_num_cpu_devices``, the successor of
``XLA_FLAGS=--xla_force_host_platform_device_count``) and the population's members over those
devices (:func:`jaxnn.population.default_devices`) puts every core to work; members never
communicate, so each device runs its share alone. ``benchmarks/population.py`` measures it.

It must happen before JAX starts its CPU backend (the first JAX operation), so the population
verbs call :func:`split_host_devices` first thing. It changes nothing on GPU/TPU (their devices
are not CPU devices), when the user chose a CPU device count (``JAX_NUM_CPU_DEVICES`` or the
XLA flag), with one core, or with ``JAXNN_ONE_CPU_DEVICE=1``. Library users do the same with
``jax.config.update("jax_num_cpu_devices", os.cpu_count())`` right after ``import jax``.
"""

from __future__ import annotations

import os

#: ``JAXNN_ONE_CPU_DEVICE=1`` keeps the host one device.
OFF_VARIABLE = "JAXNN_ONE_CPU_DEVICE"


def cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def split_host_devices() -> int | None:
    """Make the CPU backend one device per core; returns that count, or ``None`` when it
    changed nothing (see the module docstring)."""
    if os.environ.get(OFF_VARIABLE, "").strip() not in ("", "0"):
        return None
    if "JAX_NUM_CPU_DEVICES" in os.environ or (
            "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")):
        return None
    n = cores()
    if n < 2:
        return None
    import jax

    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:  # the backend already started (e.g. a second command in one process)
        return None
    return n
