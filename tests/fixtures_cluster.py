"""Real worker processes on 127.0.0.1 for the distributed tests: ports, TF_CONFIG, logs, and reaping.

Every process starts in its own session (process group); :class:`Processes` kills every group still alive
when it exits, whatever happened in the test, so no worker outlives it. Ports come from below the kernel's
ephemeral range (where outgoing connections take theirs) and are checked free just before the start; a
start that loses a port race anyway is retried with new ports by :func:`run_cluster`.
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import signal
import socket
import subprocess
import sys
import threading
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
PORT_CLASH = ("Could not start gRPC server", "Address already in use", "Failed to add port")


def free_ports(count: int) -> list:
    """``count`` distinct TCP ports on 127.0.0.1 that nothing listens on now, outside the ephemeral range."""
    low, high = 20000, 32000
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="utf-8") as f:
            ephemeral_low = int(f.read().split()[0])
        high = min(high, ephemeral_low - 1)
    except (OSError, ValueError, IndexError):
        pass
    ports = []
    rng = random.Random(os.getpid() ^ time.time_ns())
    while len(ports) < count:
        port = rng.randint(low, high)
        if port in ports:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
    return ports


def tf_config(ports: list, index: int) -> str:
    """``TF_CONFIG`` of worker ``index`` in a cluster of workers on ``127.0.0.1:ports``."""
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                       "task": {"type": "worker", "index": index}})


def base_env(**extra) -> dict:
    """The environment of a worker process: this checkout on the path, quiet TensorFlow, no GPU."""
    env = dict(os.environ)
    env.pop("TF_CONFIG", None)
    for name in ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT"):
        env.pop(name, None)
    env.update({"PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "",
                "PYTHONUNBUFFERED": "1"})
    env.update({k: str(v) for k, v in extra.items()})
    return env


class Processes:
    """Named child processes with their output in ``logs/<name>.log``; all reaped on exit.

    Example:
        >>> with Processes(tmp_path / "logs") as procs:
        ...     procs.start("w0", [sys.executable, "-m", "training.fit", ...], env)
        ...     codes = procs.wait(timeout=300)
    """

    def __init__(self, logs: pathlib.Path):
        self.logs = pathlib.Path(logs)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.procs = {}

    def __enter__(self):
        # A SIGTERM (a CI time-out) must still reap the children: turn it into an exception while inside.
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        return self

    def __exit__(self, *exc):
        try:
            self.kill_all()
        finally:
            if self._previous is not None:
                signal.signal(signal.SIGTERM, self._previous)

    def start(self, name: str, argv: list, env: dict) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "w", encoding="utf-8")
        try:
            proc = subprocess.Popen(argv, env=env, cwd=str(REPO), stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            log.close()
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(encoding="utf-8", errors="replace")

    def wait(self, timeout: float, names=None, *, after_failure: float = 180.0) -> dict:
        """Exit codes ``{name: code}`` of ``names`` (default all).

        Raises TimeoutError (after killing them all) when they are not all done after ``timeout`` s, or
        ``after_failure`` s after one of them failed (its peers should notice and stop by then).
        """
        names = list(self.procs) if names is None else list(names)
        deadline = time.monotonic() + timeout
        failed_at = None
        while True:
            codes = {name: self.procs[name].poll() for name in names}
            if all(code is not None for code in codes.values()):
                return codes
            now = time.monotonic()
            if failed_at is None and any(code not in (None, 0) for code in codes.values()):
                failed_at = now
            if now > deadline or (failed_at is not None and now - failed_at > after_failure):
                self.kill_all()
                tails = "\n".join(f"--- {n} (exit {codes[n]}) ---\n{self.log(n)[-3000:]}" for n in names)
                why = f"{timeout} s" if now > deadline else f"{after_failure} s after a peer failed"
                raise TimeoutError(f"processes still running after {why} (killed): {codes}\n{tails}")
            time.sleep(0.2)

    def wait_for_text(self, name: str, text: str, timeout: float) -> None:
        """Returns once ``text`` appears in ``name``'s output; raises if it exits first or after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log(name):
                return
            if self.procs[name].poll() is not None:
                raise RuntimeError(f"{name} exited ({self.procs[name].returncode}) before printing {text!r}:\n"
                                   f"{self.log(name)[-3000:]}")
            time.sleep(0.2)
        raise TimeoutError(f"{name} did not print {text!r} within {timeout} s:\n{self.log(name)[-3000:]}")

    def kill(self, name: str, sig=signal.SIGKILL) -> None:
        proc = self.procs[name]
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass

    def kill_all(self) -> None:
        for name, proc in self.procs.items():
            self.kill(name)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def run_cluster(argv: list, num_workers: int, *, logs: pathlib.Path, timeout: float, env=None,
                attempts: int = 3, prefix: str = "worker") -> tuple:
    """Runs ``argv`` as every worker of a ``num_workers`` cluster on 127.0.0.1; returns ``(codes, outputs)``.

    ``codes`` and ``outputs`` are lists by worker index. A start that lost its ports to another program is
    retried with new ports.
    """
    for attempt in range(attempts):
        ports = free_ports(num_workers)
        names = [f"{prefix}{i}" for i in range(num_workers)]
        with Processes(logs) as procs:
            for i, name in enumerate(names):
                procs.start(name, argv, base_env(**(env or {}), TF_CONFIG=tf_config(ports, i)))
            codes = procs.wait(timeout)
            outputs = [procs.log(name) for name in names]
        if attempt + 1 < attempts and any(code and any(c in out for c in PORT_CLASH)
                                          for code, out in zip(codes.values(), outputs)):
            continue
        return [codes[n] for n in names], outputs
    raise AssertionError("unreachable")


def python_module(module: str, *args) -> list:
    """``[python, -m, module, args...]`` with this interpreter."""
    return [sys.executable, "-m", module, *map(str, args)]


def last_model_values(run_dir) -> dict:
    """``{variable name: array}`` of the model variables in a run's ``checkpoints/last`` (the final epoch)."""
    import tensorflow as tf

    path = tf.train.latest_checkpoint(str(pathlib.Path(run_dir) / "checkpoints" / "last"))
    assert path is not None, f"{run_dir} has no checkpoints/last"
    reader = tf.train.load_checkpoint(path)
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map() if name.startswith("model/")}
