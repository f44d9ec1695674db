"""A distributed Airflow deployment for end-to-end tests: CeleryExecutor on Redis, PostgreSQL, separate components.

``CeleryDeployment`` extends ``standalone.Deployment`` (same fresh PostgreSQL database, environment, REST
driving, triggerer handling and clean-up) but starts each component on its own, as on several machines:
``airflow api-server``, ``scheduler``, ``dag-processor``, N ``triggerer`` and N ``celery worker`` processes
with different Celery hostnames. Redis (the broker) is started if it does not answer, and the deployment
uses a Redis database number of its own, flushed before and after. Each worker reports its own name as the
task instance's ``hostname`` (``tests/e2e/node.py``), so a test can tell which worker ran each try.

``kill_worker()`` SIGKILLs a worker's whole process tree (the Celery parent, its pool, each task's
supervisor and task process, which sit in process groups of their own), as when its machine dies.
"""

from __future__ import annotations

import contextlib
import functools
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tests.e2e.standalone import VENV_BIN, Deployment, DeploymentError, _running, _signal_tree, wait_for

if TYPE_CHECKING:
    from collections.abc import Iterable
    from pathlib import Path

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
REDIS_START = [
    "redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port", str(REDIS_PORT),
    "--save", "", "--appendonly", "no", "--dir", "/var/lib/redis", "--logfile", "/var/log/redis/ci.log",
]  # fmt: skip


def ensure_redis(db: int, timeout: float = 30.0) -> None:
    """Start the machine's Redis if it does not answer, then empty database ``db`` (this deployment's broker)."""
    import redis

    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db, socket_connect_timeout=2)

    def answers() -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    if not answers():
        subprocess.run(REDIS_START, check=False, capture_output=True, timeout=timeout)
        wait_for(f"Redis on {REDIS_HOST}:{REDIS_PORT}", answers, timeout)
    client.flushdb()
    client.close()


def flush_redis(db: int) -> None:
    import redis

    with contextlib.suppress(redis.RedisError):
        client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db, socket_connect_timeout=2)
        client.flushdb()
        client.close()


@dataclass
class Worker:
    """One ``airflow celery worker`` (the Celery parent process; its pool and task processes are children)."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    alive: bool = True


class CeleryDeployment(Deployment):
    """Airflow with CeleryExecutor, each component a process of its own, on a fresh PostgreSQL database.

    :param redis_db: The Redis database number of the broker (flushed at start and stop).
    :param workers: Celery worker names (each also the task instances' ``hostname`` of the tries it runs).
    :param concurrency: Task slots per worker.
    :param triggerers: How many triggerers to start.
    :param task_heartbeat_timeout: Seconds without a task heartbeat before the scheduler fails the try
        (``[scheduler] task_instance_heartbeat_timeout``, 300 by default): how soon a dead worker's tasks retry.
    :param task_queued_timeout: Seconds a task may stay queued before the scheduler requeues it
        (``[scheduler] task_queued_timeout``, 600 by default): how soon a task whose message died with a
        worker before it started runs again.
    The other (keyword) parameters are those of ``Deployment``.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        redis_db: int,
        workers: Iterable[str] = ("worker-a", "worker-b"),
        concurrency: int = 6,
        triggerers: int = 2,
        task_heartbeat_timeout: int = 20,
        task_queued_timeout: int = 60,
        **deployment: Any,
    ) -> None:
        self.redis_db = redis_db
        self.worker_names = list(workers)
        self.concurrency = concurrency
        self.triggerer_count = triggerers
        self.task_heartbeat_timeout = task_heartbeat_timeout
        self.task_queued_timeout = task_queued_timeout
        self.workers: list[Worker] = []
        self._components: dict[str, subprocess.Popen[bytes]] = {}  # the single ones (api-server, ...) by name
        super().__init__(workdir, **deployment)

    def _environment(self, extra: dict[str, str], job_heartbeat_sec: int) -> dict[str, str]:
        env = super()._environment(extra, job_heartbeat_sec)
        env.update(
            {
                "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
                "AIRFLOW__CELERY__BROKER_URL": f"redis://{REDIS_HOST}:{REDIS_PORT}/{self.redis_db}",
                "AIRFLOW__CELERY__RESULT_BACKEND": (
                    f"db+postgresql+psycopg2://postgres@127.0.0.1:5432/{self.database}"
                ),
                "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(self.concurrency),
                # Sending a task to Redis from a loaded 2-core machine can take more than the 1 s default.
                "AIRFLOW__CELERY__OPERATION_TIMEOUT": "10",
                "AIRFLOW__CORE__HOSTNAME_CALLABLE": "tests.e2e.node.name",
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(self.task_heartbeat_timeout),
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
                # A message a dead worker had taken but not started waits for Redis' visibility timeout (6 h):
                # the scheduler requeues a task queued this long instead (600 s by default). Tests keep the
                # queue short (a DAG's max_active_tasks at most the slots), so a live task is not requeued.
                "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": str(self.task_queued_timeout),
            }
        )
        return env

    def start(self, timeout: float = 300.0) -> CeleryDeployment:
        """Migrate the database, start every component and return once workers and DAGs are ready."""
        started = time.monotonic()
        deadline = started + timeout
        try:
            ensure_redis(self.redis_db)
            self._prepare()
            migrate_log = self.workdir / "db-migrate.log"
            self.logs["db-migrate"] = migrate_log
            with migrate_log.open("wb") as sink:
                migrated = subprocess.run(
                    [str(VENV_BIN / "airflow"), "db", "migrate"],
                    env=self.env,
                    cwd=self.workdir,
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                    timeout=timeout,
                )
            if migrated.returncode != 0:
                raise DeploymentError(f"airflow db migrate failed:\n{migrate_log.read_text()[-3000:]}")
            for name, command in [
                ("api-server", ("api-server",)),
                ("scheduler", ("scheduler",)),
                ("dag-processor", ("dag-processor",)),
            ]:
                self._components[name] = self.spawn(name, *command)[0]
            for index in range(self.triggerer_count):
                self.start_triggerer(f"triggerer-{index}")
            for name in self.worker_names:
                self.start_worker(name)
            for worker in self.workers:
                wait_for(
                    f"{worker.name} to be ready",
                    functools.partial(self._worker_ready, worker),
                    deadline - time.monotonic(),
                    0.5,
                    self.diagnostics,
                )
            self._wait_healthy_and_parsed(deadline)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def start_worker(self, name: str) -> Worker:
        popen, log_path = self.spawn(
            name,
            "celery",
            "worker",
            "--celery-hostname",
            f"{name}@%h",
            "--concurrency",
            str(self.concurrency),
            "--skip-serve-logs",  # both workers share this host's AIRFLOW_HOME/logs; the API server reads files
            env={"FLUX_REDUX_E2E_NODE": name},
        )
        worker = Worker(name, popen, log_path)
        self.workers.append(worker)
        return worker

    def _worker_ready(self, worker: Worker) -> bool:
        self._check_alive()
        return " ready." in worker.log_path.read_text(errors="replace")  # Celery's "celery@<name> ready."

    def _check_alive(self) -> None:
        running = {**self._components, **{w.name: w.popen for w in self.workers if w.alive}}
        for name, popen in running.items():
            if popen.poll() is not None:
                raise DeploymentError(f"{name} exited with {popen.returncode}\n{self.diagnostics()}")

    def kill_worker(self, worker: Worker) -> list[int]:
        """SIGKILL the worker's whole process tree at once, as when its machine dies; returns the pids hit."""
        hit = _signal_tree(worker.popen.pid, signal.SIGKILL)
        wait_for(f"{worker.name} to be gone", lambda: not any(_running(pid) for pid in hit), 30, 0.1)
        worker.popen.wait(5)
        worker.alive = False
        return hit

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            self._components = {}
            for worker in self.workers:
                worker.alive = False
            flush_redis(self.redis_db)

    def tries(self, dag_id: str, run_id: str, task_id: str, map_index: int) -> list[dict[str, Any]]:
        """Every try of a task instance (state, hostname, start and end), oldest first."""
        path = f"dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/{map_index}/tries"
        return sorted(self.api("GET", path)["task_instances"], key=lambda t: t["try_number"])

    def requeued(self) -> list[int]:
        """Map indexes the scheduler found stuck in queued and requeued (their message died with a worker)."""
        text = self.logs["scheduler"].read_text(errors="replace")
        return [int(m) for m in re.findall(r"Task stuck in queued; will try to requeue\..*? map_index=(-?\d+)", text)]
