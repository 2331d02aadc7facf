"""Which ``tf.distribute`` strategy a run uses, picked the way TensorFlow users expect.

``auto`` (the default of ``--strategy``): ``MultiWorkerMirroredStrategy`` when ``TF_CONFIG`` names more than
one task (chief + workers), ``MirroredStrategy`` when this process sees several GPUs, otherwise TensorFlow's
default strategy (one device). ``default``, ``mirrored`` and ``multi-worker`` force one of them.

A multi-worker strategy must be created before TensorFlow runs anything else in the process (it configures
the collective runtime), so commands call :func:`select_strategy` first, before reading data.

``TF_CONFIG`` for worker ``I`` of ``N`` (the same cluster list on every worker)::

    {"cluster": {"worker": ["host0:port", "host1:port", ...]}, "task": {"type": "worker", "index": I}}

A ``chief`` job may be listed too; it is then worker 0 (the one that writes). Parameter servers and
evaluators are not supported.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Optional

CHOICES = ("auto", "default", "mirrored", "multi-worker")
JOBS = ("chief", "worker")


class StrategyError(ValueError):
    """A ``TF_CONFIG`` or ``--strategy`` that cannot work; the message says what to change."""


@dataclasses.dataclass(frozen=True)
class ClusterSpec:
    """The cluster ``TF_CONFIG`` describes, with this process's place in it.

    Attributes:
        workers: every task's ``host:port``, chief first: the index in this list is the worker index.
        worker_index: this process's index in ``workers``.
        num_chiefs: 1 when the cluster has a ``chief`` job (it is worker 0), else 0.
    """

    workers: tuple
    worker_index: int
    num_chiefs: int = 0

    @property
    def num_workers(self) -> int:
        return len(self.workers)


def read_tf_config(environ=None) -> Optional[ClusterSpec]:
    """The cluster of ``$TF_CONFIG``, or None when it is unset or empty.

    Raises:
        StrategyError: not JSON, no ``cluster``/``task``, an unsupported job, or a task not in the cluster.
    """
    raw = (os.environ if environ is None else environ).get("TF_CONFIG", "").strip()
    if not raw:
        return None
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as e:
        raise StrategyError(f"TF_CONFIG is not valid JSON ({e.msg} at character {e.pos}); expected "
                            '{"cluster": {"worker": ["host:port", ...]}, '
                            '"task": {"type": "worker", "index": I}}') from e
    if not isinstance(config, dict):
        raise StrategyError("TF_CONFIG must be a JSON object with 'cluster' and 'task'")
    cluster, task = config.get("cluster") or {}, config.get("task") or {}
    if not cluster:
        raise StrategyError("TF_CONFIG has no 'cluster': list the workers, "
                            '{"cluster": {"worker": ["host:port", ...]}, ...}')
    unsupported = sorted(set(cluster) - set(JOBS))
    if unsupported:
        raise StrategyError(f"TF_CONFIG lists job(s) {unsupported}; chtn trains with MultiWorkerMirroredStrategy, "
                            f"which takes only 'chief' and 'worker' jobs")
    workers = []
    for job in JOBS:
        addresses = cluster.get(job) or []
        if not isinstance(addresses, list) or not all(isinstance(a, str) and a for a in addresses):
            raise StrategyError(f"TF_CONFIG cluster.{job} must be a list of 'host:port' strings")
        workers.extend(addresses)
    if len(cluster.get("chief") or []) > 1:
        raise StrategyError("TF_CONFIG lists more than one chief; list one chief (or none) and the rest as workers")
    task_type, index = task.get("type"), task.get("index", 0)
    if task_type not in JOBS or not isinstance(index, int) or not 0 <= index < len(cluster.get(task_type) or []):
        raise StrategyError(f"TF_CONFIG task {task!r} is not in the cluster; expected "
                            f'"task": {{"type": "worker", "index": I}} with '
                            f'0 <= I < {len(cluster.get("worker") or [])}')
    worker_index = index if task_type == "chief" else index + len(cluster.get("chief") or [])
    if len(set(workers)) != len(workers):
        raise StrategyError(f"TF_CONFIG lists an address twice ({workers}); each task needs its own host:port")
    return ClusterSpec(tuple(workers), worker_index, len(cluster.get("chief") or []))


@dataclasses.dataclass
class Distribution:
    """The strategy of this process and its place in the cluster.

    Attributes:
        strategy: the ``tf.distribute.Strategy``: create the model, optimiser and metrics under its ``scope()``.
        name: ``MultiWorkerMirroredStrategy``, ``MirroredStrategy`` or ``default``.
        cluster: the ``TF_CONFIG`` cluster, or None for one process.
    """

    strategy: object
    name: str
    cluster: Optional[ClusterSpec] = None

    @property
    def num_workers(self) -> int:
        return 1 if self.cluster is None else self.cluster.num_workers

    @property
    def worker_index(self) -> int:
        return 0 if self.cluster is None else self.cluster.worker_index

    @property
    def is_chief(self) -> bool:
        """Whether this process writes the run folder (worker 0)."""
        return self.worker_index == 0

    @property
    def num_replicas(self) -> int:
        return int(self.strategy.num_replicas_in_sync)

    def record(self) -> dict:
        """What ``results.json`` records about the distribution."""
        return {"strategy": self.name, "num_workers": self.num_workers, "num_replicas": self.num_replicas}

    def describe(self) -> str:
        """One line for the log."""
        if self.cluster is None:
            return f"strategy: {self.name}, {self.num_replicas} replica(s)"
        return (f"strategy: {self.name}, worker {self.worker_index} of {self.num_workers} "
                f"({self.cluster.workers[self.worker_index]}{', chief' if self.is_chief else ''}), "
                f"{self.num_replicas} replica(s) in all")

    def worker_address(self, index: int) -> str:
        return "this process" if self.cluster is None else self.cluster.workers[index]

    def barrier(self) -> None:
        """Returns when every worker has called it (a one-number all-reduce); at once for one worker."""
        if self.num_workers == 1:
            return
        import tensorflow as tf

        strategy = self.strategy

        @tf.function
        def meet():
            return strategy.run(lambda: tf.distribute.get_replica_context().all_reduce(
                tf.distribute.ReduceOp.SUM, tf.constant(1.0)))

        meet()


def default_distribution() -> Distribution:
    """One process on TensorFlow's default strategy."""
    import tensorflow as tf

    return Distribution(tf.distribute.get_strategy(), "default", None)


def select_strategy(choice: str = "auto", *, use_tf_config: bool = True) -> Distribution:
    """Creates the strategy ``--strategy choice`` asks for (see the module docstring); call it first.

    ``use_tf_config=False``: one process whatever ``TF_CONFIG`` says (``auto`` is then mirrored or default).

    Raises:
        StrategyError: an unknown choice, a bad ``TF_CONFIG``, or a choice that contradicts it.
    """
    import tensorflow as tf

    if choice not in CHOICES or (choice == "multi-worker" and not use_tf_config):
        raise StrategyError(f"--strategy must be one of {', '.join(CHOICES)}, got {choice!r}")
    cluster = read_tf_config() if use_tf_config else None
    several = cluster is not None and cluster.num_workers > 1
    if choice == "auto":
        if several:
            choice = "multi-worker"
        else:
            choice = "mirrored" if len(tf.config.list_physical_devices("GPU")) > 1 else "default"
    if several and choice != "multi-worker":
        raise StrategyError(f"TF_CONFIG names {cluster.num_workers} workers but --strategy is {choice}: every process "
                            f"would train alone. Use --strategy multi-worker (or auto), or unset TF_CONFIG")
    if choice == "multi-worker":
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        return Distribution(strategy, "MultiWorkerMirroredStrategy", cluster)
    if choice == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        return Distribution(tf.distribute.MirroredStrategy(devices=devices), "MirroredStrategy", None)
    return default_distribution()


def check_global_batch(batch_size: int, distribution: Distribution) -> None:
    """``--batch-size`` is the global batch: it must split evenly over the replicas.

    Raises:
        StrategyError: naming the batch size and the replica count.
    """
    replicas = distribution.num_replicas
    if batch_size % replicas:
        raise StrategyError(f"--batch-size {batch_size} is the global batch and must split evenly over the "
                            f"{replicas} replicas; use a multiple of {replicas}")


_TASK = re.compile(r"/job:(chief|worker)/(?:replica:\d+/)?task:(\d+)")


def lost_workers(error: BaseException, distribution: Distribution) -> list:
    """The worker indices, other than this process's, that a collective-communication error names."""
    offset = {"chief": 0, "worker": 0 if distribution.cluster is None else distribution.cluster.num_chiefs}
    found = []
    for job, index in _TASK.findall(str(error)):
        worker = int(index) + offset[job]
        if worker != distribution.worker_index and worker not in found:
            found.append(worker)
    return found


def is_lost_worker(error: BaseException, distribution: Distribution) -> bool:
    """Whether ``error`` means a peer of this multi-worker run is gone (a failed collective), not a bug here."""
    import tensorflow as tf

    if distribution.num_workers == 1:
        return False
    communication = (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.CancelledError,
                     tf.errors.DeadlineExceededError)
    return isinstance(error, communication) or bool(lost_workers(error, distribution))


def lost_worker_message(error: BaseException, distribution: Distribution) -> str:
    """What to tell the user when a collective fails because a peer is gone (names it, says how to resume)."""
    lost = lost_workers(error, distribution)
    who = ", ".join(f"worker {i} ({distribution.worker_address(i)})" for i in lost) or "another worker"
    text = re.sub(r"\{\{[^}]*\}\}", " ", str(getattr(error, "message", error)))
    text = re.split(r"The error could be from|Additional GRPC error|\[\[|\[type\.googleapis", text)[0]
    if "Collective ops is aborted by" in text:
        text = text[text.index("Collective ops is aborted by"):]
    detail = " ".join(text.split())[:300]
    return (f"lost {who}: worker {distribution.worker_index} cannot go on without it ({detail}). "
            f"Restart the same command on every worker: training resumes after the last completed epoch")
