"""Devices, tf.distribute strategies and precision policies, set up once per process."""

import functools
import os

import tensorflow as tf


def configure_devices(cpu_devices):
    """Splits the CPU into ``cpu_devices`` logical devices; must run before TF initialises."""
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
    if name == "mirrored":
        if cpu_devices > 1 and not tf.config.list_physical_devices("GPU"):
            return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(cpu_devices)])
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def is_chief(strategy):
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
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)
