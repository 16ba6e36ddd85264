"""`kartero serve --workers N`: N serving processes on the same listeners (SO_REUSEPORT: the kernel spreads
new connections over them) and the same PostgreSQL store, under one supervisor.

Each worker is a whole server on one event loop (`kartero serve --worker I`), a node of the cluster named
NODE.I. The supervisor holds the pid file, forwards signals (TERM/INT: stop; HUP: reload certificates;
USR1: look at the queue now), prints `kartero ready` once every worker is listening, and starts a worker
again (after RESTART_DELAY_S) when one dies; a worker that exits before it is ready stops them all.

Metrics: the workers keep their Prometheus values in files of data_dir/workers/metrics (emptied here at
each start), so `/metrics` at any worker answers for all of them (see kartero/metrics.py).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from kartero import metrics
from kartero.control import remove_pid, write_pid
from kartero.log import kv

log = logging.getLogger("kartero.workers")

RESTART_DELAY_S = 1.0
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 120.0


class Supervisor:
    def __init__(self, config_path: Path, data_dir: Path, workers: int) -> None:
        self.config_path = config_path
        self.data_dir = data_dir
        self.count = workers
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self._ready: set[int] = set()
        self._all_ready = threading.Event()
        self._failed = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self.metrics_dir = data_dir / "workers" / "metrics"
        self._environment: dict[str, str] = {}

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self._stopping.set())
        for sig in (signal.SIGHUP, signal.SIGUSR1):
            signal.signal(sig, lambda number, _: self._forward(number))
        self._environment = {**os.environ, **metrics.shared_environment(self.metrics_dir)}
        for index in range(1, self.count + 1):
            self._start(index)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self._all_ready.wait(0.1):
            if self._failed.is_set() or self._stopping.is_set() or time.monotonic() > deadline:
                print("kartero: a worker did not start (its log says why)", file=sys.stderr, flush=True)
                self._stop_all()
                return 1
        write_pid(self.data_dir)
        print("kartero ready", flush=True)
        log.info("%s", kv(event="workers.ready", workers=self.count))
        try:
            while not self._stopping.wait(0.2):
                for index, process in list(self.processes.items()):
                    if process.poll() is not None and not self._stopping.is_set():
                        log.error("%s", kv(event="workers.died", worker=index, code=process.returncode))
                        metrics.process_gone(process.pid, self.metrics_dir)
                        time.sleep(RESTART_DELAY_S)
                        self._start(index)
            return self._stop_all()
        finally:
            remove_pid(self.data_dir)

    def _start(self, index: int) -> None:
        process = subprocess.Popen(
            [sys.executable, "-m", "kartero", "-c", str(self.config_path), "serve", "--worker", str(index)],
            stdout=subprocess.PIPE,
            env=self._environment,
        )
        with self._lock:
            self.processes[index] = process
        threading.Thread(target=self._relay, args=(index, process), daemon=True, name=f"worker-{index}").start()

    def _relay(self, index: int, process: subprocess.Popen[bytes]) -> None:
        """A worker's stdout: its listener lines once (from worker 1), its `kartero ready` counted."""
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if line == "kartero ready":
                with self._lock:
                    self._ready.add(index)
                    if len(self._ready) == self.count:
                        self._all_ready.set()
            elif index == 1 and not self._all_ready.is_set():
                print(line, flush=True)
        if not self._all_ready.is_set() and process.wait() != 0:
            self._failed.set()

    def _forward(self, number: int) -> None:
        with self._lock:
            processes = list(self.processes.values())
        for process in processes:
            if process.poll() is None:
                process.send_signal(number)

    def _stop_all(self) -> int:
        self._stopping.set()
        self._forward(signal.SIGTERM)
        code = 0
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for process in list(self.processes.values()):
            try:
                returned = process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                returned = process.wait()
            code = code or (1 if returned else 0)
        log.info("%s", kv(event="workers.stopped", code=code))
        return code


def serve_workers(config_path: Path, data_dir: Path, workers: int) -> int:
    return Supervisor(config_path, data_dir, workers).run()
