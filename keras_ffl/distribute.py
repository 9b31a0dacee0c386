"""Devices and distribution, set up once per process, on the running backend.

``make_distribution(config)`` returns one object with the same surface on every backend:
``scope()`` (where models and optimisers are built), ``num_replicas``, ``is_chief`` (the one
process that writes checkpoints, logs and reports), ``saves_are_collective`` (every process
must run each save, JAX across processes) and ``feed(stream)``.

* TensorFlow: ``--strategy=mirrored`` is a MirroredStrategy over the local GPUs (or
  ``--cpu_devices`` logical CPUs); ``multi_worker`` a MultiWorkerMirroredStrategy from
  TF_CONFIG or ``--worker_hosts``/``--task_index``.
* JAX: ``mirrored`` is ``keras.distribution.DataParallel`` over every local device
  (``--cpu_devices`` splits the CPU through ``XLA_FLAGS``, before JAX starts); ``multi_worker``
  starts JAX's distributed runtime through ``keras.distribution.initialize`` (worker 0 of
  ``--worker_hosts`` coordinates) and data-parallelises over every device of every process,
  each process feeding its share of each global batch.
"""

import contextlib
import functools
import os

import keras

from keras_ffl.errors import ConfigError


def num_replicas():
    """How many replicas a training step is split over, on the running backend."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.distribute.get_strategy().num_replicas_in_sync
    if backend == "jax":
        distribution = keras.distribution.distribution()
        return int(distribution.device_mesh.devices.size) if distribution is not None else 1
    return 1


# ------------------------------------------------------------------- TensorFlow
def configure_devices(cpu_devices):
    """Splits the CPU into ``cpu_devices`` logical devices; must run before TF initialises."""
    import tensorflow as tf

    if cpu_devices > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        current = tf.config.get_logical_device_configuration(cpu)
        if current and len(current) == cpu_devices:
            return
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * cpu_devices)


@functools.lru_cache(maxsize=None)
def make_strategy(name, cpu_devices=0):
    """One strategy per kind and process: a second MirroredStrategy in the same process reuses
    collective keys and TF aborts ("Shape mismatch in the collective instance"), and FFCL's
    pre-training stage runs in the same process as its collaborative stage."""
    import tensorflow as tf

    if name == "mirrored":
        if cpu_devices > 1 and not tf.config.list_physical_devices("GPU"):
            return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(cpu_devices)])
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def tf_is_chief(strategy):
    """Whether this process writes checkpoints, logs and reports (one writer per cluster)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def cluster_from_flags(worker_hosts, task_index):
    """Sets TF_CONFIG from ``--worker_hosts``/``--task_index`` (the config check has refused a
    different TF_CONFIG already)."""
    from keras_ffl.config import cluster_json

    if worker_hosts:
        os.environ["TF_CONFIG"] = cluster_json(worker_hosts, task_index)


def distribute_by_data(dataset):
    """Multi-worker input: every worker runs the same (seeded) pipeline and keeps its share of
    each global batch, so the cluster trains on exactly the batches one process would.
    (Sharding by file would read less, but changes which examples meet in a batch.)"""
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


class TensorFlowDistribution:
    def __init__(self, config):
        configure_devices(config.cpu_devices)
        cluster_from_flags(config.worker_hosts, config.task_index)
        self.strategy = make_strategy(config.strategy, config.cpu_devices)
        self.num_replicas = self.strategy.num_replicas_in_sync
        self.is_chief = tf_is_chief(self.strategy)
        self.process = (0, 1)
        self.saves_are_collective = False

    def scope(self):
        return self.strategy.scope()

    def feed(self, stream):
        return distribute_by_data(stream)


# -------------------------------------------------------------------------- JAX
@functools.lru_cache(maxsize=None)
def jax_initialize(coordinator, num_processes, process_id):
    """JAX's distributed runtime, started once per process, before anything starts a JAX
    backend (so nothing here may ask JAX for its devices)."""
    import jax

    try:  # cross-process collectives on CPU hosts; the default from JAX 0.4.36, set for older ones
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except AttributeError:
        pass
    keras.distribution.initialize(coordinator, num_processes, process_id)


class JaxDistribution:
    def __init__(self, config):
        import jax

        if config.strategy == "multi_worker":
            jax_initialize(config.worker_hosts[0], len(config.worker_hosts), config.task_index)
        if config.strategy in ("mirrored", "multi_worker"):
            devices = jax.devices()
            if config.cpu_devices > 1 and jax.default_backend() == "cpu":
                if len(devices) < config.cpu_devices:
                    raise ConfigError(f"--cpu_devices={config.cpu_devices} but JAX started with {len(devices)} CPU "
                                      "device(s): the split is made before JAX starts (python -m keras_ffl.train "
                                      "does it; in Python set XLA_FLAGS=--xla_force_host_platform_device_count="
                                      f"{config.cpu_devices} before importing Keras)")
                devices = devices[:config.cpu_devices]
            # Each process's stream already holds its share of every global batch (load_data's
            # shard), which keeps the batches one process would see; Keras's own sharding
            # takes tf.data input only.
            keras.distribution.set_distribution(
                keras.distribution.DataParallel(devices=devices, auto_shard_dataset=False))
            self.num_replicas = len(devices)
        else:
            keras.distribution.set_distribution(None)
            self.num_replicas = 1
        self.process = (jax.process_index(), jax.process_count())
        self.is_chief = self.process[0] == 0
        self.saves_are_collective = self.process[1] > 1

    def scope(self):
        return contextlib.nullcontext()

    def feed(self, stream):
        return stream


class SingleDevice:
    """Any other backend: one device."""

    num_replicas, is_chief, process, saves_are_collective = 1, True, (0, 1), False

    def __init__(self, config):
        if config.strategy != "default":
            raise ValueError(f"--strategy={config.strategy} needs the TensorFlow or JAX backend")

    def scope(self):
        return contextlib.nullcontext()

    def feed(self, stream):
        return stream


def make_distribution(config):
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return TensorFlowDistribution(config)
    if backend == "jax":
        return JaxDistribution(config)
    return SingleDevice(config)
