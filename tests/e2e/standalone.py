"""A real Airflow deployment for end-to-end tests: ``airflow standalone`` on PostgreSQL, driven over REST.

``Deployment`` starts ``airflow standalone`` (scheduler with LocalExecutor, dag processor, triggerer, API
server) in a temporary ``AIRFLOW_HOME`` whose metadata database is a fresh PostgreSQL database, with the
example DAGs and the test DAGs of ``tests/e2e/dags/`` copied into its DAGs folder. Every component gets
the same environment (connection ``flux_redux_default`` with the API key, fast heartbeats); the triggerer
imports the trigger by classpath from the installed package.

The harness can kill (SIGKILL/SIGTERM), stall (SIGSTOP/SIGCONT) and add triggerers, and find and kill a
task's worker process. ``stop()`` ends every process it started (the standalone process group, each
extra triggerer's group, and, as a last sweep, any process still running with this deployment's
``AIRFLOW_HOME``) and drops the database; it is safe to call twice and is called on any start failure.

Nothing here mocks Airflow: tests see what a user of a real deployment would see.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import math
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import psutil

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
E2E_DAGS = Path(__file__).resolve().parent / "dags"
PG_DSN = "host=127.0.0.1 port=5432 user=postgres"
TERMINAL = {"success", "failed", "skipped", "upstream_failed", "removed"}


class DeploymentError(AssertionError):
    """A step of the deployment did not happen in time; the message says what was seen."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    what: str,
    probe: Callable[[], Any],
    timeout: float,
    interval: float = 0.25,
    on_timeout: Callable[[], str] | None = None,
) -> Any:
    """Call ``probe`` until it returns something truthy; raise DeploymentError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = probe()
        except (httpx.HTTPError, OSError) as err:  # a component may be restarting: retry until the deadline
            last = err
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            extra = on_timeout() if on_timeout else ""
            raise DeploymentError(f"timed out after {timeout:.0f} s waiting for {what}; last seen: {last!r}\n{extra}")
        time.sleep(interval)


# -- PostgreSQL ---------------------------------------------------------------------------------------------


def ensure_postgres(timeout: float = 60.0) -> None:
    """Start the machine's PostgreSQL cluster if it does not answer (as the CI machine may boot without it)."""
    import psycopg2

    def answers() -> bool:
        try:
            psycopg2.connect(PG_DSN + " dbname=postgres connect_timeout=2").close()
            return True
        except psycopg2.OperationalError:
            return False

    if answers():
        return
    versions = sorted(os.listdir("/etc/postgresql")) if os.path.isdir("/etc/postgresql") else []
    if not versions:
        raise DeploymentError("PostgreSQL does not answer on 127.0.0.1:5432 and no cluster is installed")
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", "start"],
        check=False,
        capture_output=True,
        timeout=timeout,
    )
    wait_for("PostgreSQL on 127.0.0.1:5432", answers, timeout)


def _admin_sql(sql: str) -> None:
    import psycopg2

    conn = psycopg2.connect(PG_DSN + " dbname=postgres")
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


# -- processes ----------------------------------------------------------------------------------------------


def _signal_tree(pid: int, sig: int) -> list[int]:
    """Send ``sig`` to ``pid`` and all its descendants (children first is irrelevant for these signals)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    hit = []
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            proc.send_signal(sig)
            hit.append(proc.pid)
    return hit


def _running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (a zombie whose parent is not us never goes away alone)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@dataclass
class Triggerer:
    """One ``airflow triggerer`` process tree (the supervisor and its trigger-runner child)."""

    name: str
    pid: int
    job_id: int
    log_path: Path | None = None
    popen: subprocess.Popen[bytes] | None = None
    pids: list[int] = field(default_factory=list)  # the tree as last seen, to signal it after the root died
    alive: bool = True
    stopped: bool = False

    def tree(self) -> list[int]:
        try:
            root = psutil.Process(self.pid)
            self.pids = [root.pid, *(child.pid for child in root.children(recursive=True))]
        except psutil.NoSuchProcess:
            pass
        return list(self.pids)

    def signal(self, sig: int) -> None:
        for pid in self.tree():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def log_text(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")


class Deployment:
    """``airflow standalone`` on a fresh PostgreSQL database, with extra triggerers on demand.

    :param workdir: A fresh folder for AIRFLOW_HOME, the DAGs folder, logs and outputs.
    :param dag_files: DAG files copied into the DAGs folder.
    :param env: Extra environment for every component (connection, example inputs, ...).
    :param dag_ids: DAGs that must be parsed before ``start()`` returns.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        dag_files: Iterable[Path],
        env: dict[str, str],
        dag_ids: Iterable[str],
        health_check_threshold: int = 10,
        job_heartbeat_sec: int = 1,
    ) -> None:
        self.workdir = workdir
        self.home = workdir / "airflow-home"
        self.dags_folder = workdir / "dags"
        self.dag_files = list(dag_files)
        self.dag_ids = list(dag_ids)
        self.database = f"flux_redux_e2e_{uuid.uuid4().hex[:12]}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.fernet_key = _fernet_key()
        self.health_check_threshold = health_check_threshold
        self.env = self._environment(env, job_heartbeat_sec)
        self.standalone: subprocess.Popen[bytes] | None = None
        self.standalone_log = workdir / "standalone.log"
        self.logs: dict[str, Path] = {}  # component name -> its log file, for diagnostics
        self.triggerers: list[Triggerer] = []
        self._extra: list[subprocess.Popen[bytes]] = []
        self._client: httpx.Client | None = None
        self._db_created = False
        self.startup_seconds = 0.0

    # -- lifecycle ----------------------------------------------------------------------------------------

    def _environment(self, extra: dict[str, str], job_heartbeat_sec: int) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("AIRFLOW", "FLUX_REDUX_", "FAL_", "PYTEST_"))
        }
        env.update(
            {
                "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # standalone runs `airflow`
                "PYTHONPATH": str(ROOT),
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                "AIRFLOW__CORE__PARALLELISM": "32",
                "AIRFLOW__CORE__FERNET_KEY": self.fernet_key,
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": (
                    f"postgresql+psycopg2://postgres@127.0.0.1:5432/{self.database}"
                ),
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(self.port),
                "AIRFLOW__API__BASE_URL": self.url,
                "AIRFLOW__API__WORKERS": "1",
                "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
                "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "2",
                "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "60",
                "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
                "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
                "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": str(job_heartbeat_sec),
                "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": str(self.health_check_threshold),
                "AIRFLOW__TRIGGERER__RUNNER_HEALTH_CHECK_THRESHOLD": "0",  # a SIGCONT runner must not be shunned
                "PYTHONUNBUFFERED": "1",
                "NO_COLOR": "1",
            }
        )
        env.update(extra)
        return env

    def start(self, timeout: float = 240.0) -> Deployment:
        """Create the database, start ``airflow standalone`` and return once it runs every DAG asked for."""
        started = time.monotonic()
        try:
            self._prepare()
            self.logs["standalone"] = self.standalone_log
            with self.standalone_log.open("wb") as sink:
                self.standalone = subprocess.Popen(
                    [str(VENV_BIN / "airflow"), "standalone"],
                    env=self.env,
                    cwd=self.workdir,
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,  # its own process group: stop() can end every component
                )
            self._wait_ready(started + timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def _prepare(self) -> None:
        """A fresh database, AIRFLOW_HOME and DAGs folder (with the DAG files), before any component starts."""
        if importlib.util.find_spec("asyncpg") is None:
            raise DeploymentError("Airflow on PostgreSQL needs the asyncpg driver: pip install asyncpg ([test] extra)")
        ensure_postgres()
        _admin_sql(f'CREATE DATABASE "{self.database}"')
        self._db_created = True
        self.home.mkdir(parents=True, exist_ok=True)
        self.dags_folder.mkdir(parents=True, exist_ok=True)
        for dag_file in self.dag_files:
            shutil.copy(dag_file, self.dags_folder / dag_file.name)

    def _wait_healthy_and_parsed(self, deadline: float) -> None:
        """Until the API server reports every component healthy and has each DAG asked for."""

        def up() -> bool:
            self._check_alive()
            health = httpx.get(f"{self.url}/api/v2/monitor/health", timeout=5).json()
            return all(
                (health.get(part) or {}).get("status") == "healthy"
                for part in ("metadatabase", "scheduler", "triggerer", "dag_processor")
            )

        wait_for("the deployment to be healthy", up, deadline - time.monotonic(), 1.0, self.diagnostics)

        def parsed(dag_id: str) -> bool:
            self._check_alive()
            return bool(self.api("GET", f"dags/{dag_id}", ok=(200, 404)).get("dag_id"))

        for dag_id in self.dag_ids:
            wait_for(
                f"DAG {dag_id} to be parsed",
                functools.partial(parsed, dag_id),
                deadline - time.monotonic(),
                1.0,
                self.diagnostics,
            )

    def _wait_ready(self, deadline: float) -> None:
        self._wait_healthy_and_parsed(deadline)
        children = [p for p in self._standalone_children() if "triggerer" in p.cmdline()]
        if len(children) != 1:
            raise DeploymentError(f"expected one triggerer under standalone, saw {children}\n{self.diagnostics()}")
        (job_id,) = wait_for("the triggerer's job row", lambda: self.live_triggerer_jobs(), 30, 0.5)
        self.triggerers.append(Triggerer("standalone-triggerer", children[0].pid, job_id, self.standalone_log))

    def _check_alive(self) -> None:
        if self.standalone is not None and self.standalone.poll() is not None:
            raise DeploymentError(f"airflow standalone exited with {self.standalone.returncode}\n{self.diagnostics()}")

    def _standalone_children(self) -> list[psutil.Process]:
        if self.standalone is None:
            return []
        try:
            return psutil.Process(self.standalone.pid).children()
        except psutil.NoSuchProcess:
            return []

    def stop(self) -> None:
        """End every process this deployment started and drop its database. Safe to call twice."""
        if self._client is not None:
            self._client.close()
            self._client = None
        for triggerer in self.triggerers:
            if triggerer.stopped:
                triggerer.signal(signal.SIGCONT)  # a stopped process cannot act on SIGTERM
        groups = [p.pid for p in [self.standalone, *self._extra] if p is not None]
        tracked: set[int] = set()
        for pid in groups:
            with contextlib.suppress(psutil.NoSuchProcess):
                tracked.update(c.pid for c in psutil.Process(pid).children(recursive=True))
        for triggerer in self.triggerers:
            tracked.update(triggerer.pids)
        for pid in groups:  # every component in its group, at once: nothing is worth a graceful wait here
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for popen in [self.standalone, *self._extra]:
            if popen is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    popen.wait(max(0.1, deadline - time.monotonic()))
        for pid in groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        leftovers = tracked | set(self._processes_of_this_home())
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        for popen in [self.standalone, *self._extra]:
            if popen is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    popen.wait(5)
        self.standalone = None
        self._extra = []
        if self._db_created:
            self._db_created = False
            with contextlib.suppress(Exception):
                _admin_sql(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')

    def _processes_of_this_home(self) -> Iterator[int]:
        """Processes still running with this deployment's AIRFLOW_HOME (all were started by it)."""
        me = os.getpid()
        for proc in psutil.process_iter(["pid"]):
            if proc.pid == me:
                continue
            with contextlib.suppress(psutil.Error):
                if proc.environ().get("AIRFLOW_HOME") == str(self.home):
                    yield proc.pid

    def __enter__(self) -> Deployment:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- REST API -----------------------------------------------------------------------------------------

    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            token = httpx.get(f"{self.url}/auth/token", timeout=10).raise_for_status().json()["access_token"]
            self._client = httpx.Client(
                base_url=f"{self.url}/api/v2/", headers={"Authorization": f"Bearer {token}"}, timeout=30
            )
        return self._client

    def api(self, method: str, path: str, *, ok: Iterable[int] = (200,), **kwargs: Any) -> Any:
        response = self.client.request(method, path, **kwargs)
        if response.status_code == 401:  # the token expired: take a new one once
            self._client = None
            response = self.client.request(method, path, **kwargs)
        if response.status_code not in tuple(ok):
            raise DeploymentError(f"{method} {path}: HTTP {response.status_code}: {response.text[:2000]}")
        if not response.content:
            return {}
        return response.json()

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None) -> str:
        """Unpause ``dag_id`` and start a run of it; returns the run id."""
        self.api("PATCH", f"dags/{dag_id}", json={"is_paused": False})
        run_id = f"e2e__{dag_id}__{uuid.uuid4().hex[:8]}"
        self.api(
            "POST",
            f"dags/{dag_id}/dagRuns",
            json={"dag_run_id": run_id, "logical_date": None, "conf": conf or {}},
        )
        return run_id

    def _ti_path(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> str:
        path = f"dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}"
        return f"{path}/{map_index}" if map_index >= 0 else path

    def task_instance(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> dict[str, Any]:
        return self.api("GET", self._ti_path(dag_id, run_id, task_id, map_index))

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        return self.api("GET", f"dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 1000})[
            "task_instances"
        ]

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self.api("GET", f"dags/{dag_id}/dagRuns/{run_id}")

    def set_state(self, dag_id: str, run_id: str, task_id: str, state: str, map_index: int = -1) -> Any:
        return self.api("PATCH", self._ti_path(dag_id, run_id, task_id, map_index), json={"new_state": state})

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value", map_index: int = -1) -> Any:
        entry = self.api(
            "GET",
            f"dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}",
            params={"map_index": map_index, "deserialize": True},
        )
        return entry["value"]

    def xcoms(self, dag_id: str, run_id: str, task_id: str = "~") -> list[dict[str, Any]]:
        return self.api(
            "GET", f"dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries", params={"limit": 1000}
        )["xcom_entries"]

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1, map_index: int = -1) -> list[Any]:
        """The task's log through the REST API, as structured entries (each a dict with ``event``)."""
        data = self.api(
            "GET",
            f"dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}",
            params={"full_content": True, "map_index": map_index},
            headers={"Accept": "application/json"},
        )
        content = data.get("content", [])
        return content if isinstance(content, list) else [{"event": str(content)}]

    def task_log_text(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1, map_index: int = -1) -> str:
        return "\n".join(
            json.dumps(entry, default=str) if isinstance(entry, dict) else str(entry)
            for entry in self.task_log(dag_id, run_id, task_id, try_number, map_index)
        )

    def wait_task(
        self,
        dag_id: str,
        run_id: str,
        task_id: str,
        states: Iterable[str],
        timeout: float,
        map_index: int = -1,
        interval: float = 0.2,
    ) -> dict[str, Any]:
        """Poll until the task instance is in one of ``states``; fails early if it ends in another final state."""
        wanted = set(states)

        def probe() -> dict[str, Any] | None:
            ti = self.task_instance(dag_id, run_id, task_id, map_index)
            if ti["state"] in wanted:
                return ti
            if ti["state"] in TERMINAL:
                raise DeploymentError(
                    f"{dag_id}/{run_id}/{task_id}[{map_index}] ended {ti['state']}, expected {sorted(wanted)}\n"
                    + self.known_airflow_race(ti["id"])
                    + self.diagnostics(dag_id, run_id, task_id, map_index)
                )
            return None

        return wait_for(
            f"{dag_id}/{task_id}[{map_index}] to be {sorted(wanted)}",
            probe,
            timeout,
            interval,
            lambda: self.diagnostics(dag_id, run_id, task_id, map_index),
        )

    def wait_run(self, dag_id: str, run_id: str, states: Iterable[str], timeout: float) -> dict[str, Any]:
        wanted = set(states)

        def probe() -> dict[str, Any] | None:
            run = self.dag_run(dag_id, run_id)
            if run["state"] in wanted:
                return run
            if run["state"] in ("success", "failed"):
                raise DeploymentError(
                    f"run {run_id} ended {run['state']}, expected {sorted(wanted)}\n" + self.diagnostics(dag_id, run_id)
                )
            return None

        return wait_for(
            f"run {run_id} to be {sorted(wanted)}", probe, timeout, 0.5, lambda: self.diagnostics(dag_id, run_id)
        )

    # -- metadata DB ----------------------------------------------------------------------------------------

    def sql(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        import psycopg2

        conn = psycopg2.connect(PG_DSN + f" dbname={self.database}")
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(query, params)
                return list(cur.fetchall()) if cur.description else []
        finally:
            conn.close()

    def trigger_row(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> dict[str, Any] | None:
        """The ``trigger`` row of a deferred task, straight from PostgreSQL: raw and decrypted kwargs."""
        rows = self.sql(
            "SELECT t.id, t.classpath, t.kwargs, t.triggerer_id FROM task_instance ti "
            "JOIN trigger t ON t.id = ti.trigger_id "
            "WHERE ti.dag_id = %s AND ti.run_id = %s AND ti.task_id = %s AND ti.map_index = %s",
            (dag_id, run_id, task_id, map_index),
        )
        if not rows:
            return None
        trigger_id, classpath, raw, triggerer_id = rows[0]
        return {
            "id": trigger_id,
            "classpath": classpath,
            "raw_kwargs": raw,
            "kwargs": self.decrypt_kwargs(raw),
            "triggerer_id": triggerer_id,
        }

    def decrypt_kwargs(self, raw: str) -> dict[str, Any]:
        """Trigger kwargs as stored (Fernet-encrypted serde JSON), decrypted with this deployment's key."""
        from cryptography.fernet import Fernet

        text = raw if raw.startswith("{") else Fernet(self.fernet_key.encode()).decrypt(raw.encode()).decode()
        return _unwrap_serde(json.loads(text))

    def live_triggerer_jobs(self) -> list[int]:
        rows = self.sql(
            "SELECT id FROM job WHERE job_type = 'TriggererJob' AND state = 'running' "
            "AND latest_heartbeat > now() - make_interval(secs => %s) ORDER BY id",
            (float(self.health_check_threshold),),
        )
        return [row[0] for row in rows]

    # -- triggerers and workers ----------------------------------------------------------------------------

    def spawn(
        self, name: str, *command: str, env: dict[str, str] | None = None
    ) -> tuple[subprocess.Popen[bytes], Path]:
        """Start ``airflow <command>`` in a process group of its own, logging to ``<workdir>/<name>.log``.

        ``stop()`` ends it with the rest; ``env`` adds to the deployment's environment (per-node settings).
        """
        log_path = self.workdir / f"{name}.log"
        with log_path.open("wb") as sink:
            popen = subprocess.Popen(
                [str(VENV_BIN / "airflow"), *command],
                env={**self.env, **(env or {})},
                cwd=self.workdir,
                stdout=sink,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self._extra.append(popen)
        self.logs[name] = log_path
        return popen, log_path

    def start_triggerer(self, name: str | None = None, timeout: float = 60.0) -> Triggerer:
        """Start another ``airflow triggerer`` against the same database; returns once its job heartbeats."""
        name = name or f"triggerer-{len(self.triggerers)}"
        known = self.sql("SELECT coalesce(max(id), 0) FROM job WHERE job_type = 'TriggererJob'")[0][0]
        popen, log_path = self.spawn(name, "triggerer", "--skip-serve-logs")

        def job() -> int | None:
            if popen.poll() is not None:
                raise DeploymentError(f"{name} exited with {popen.returncode}:\n{log_path.read_text()[-3000:]}")
            rows = self.sql(
                "SELECT id FROM job WHERE job_type = 'TriggererJob' AND state = 'running' AND id > %s ORDER BY id",
                (known,),
            )
            return rows[0][0] if rows else None

        job_id = wait_for(f"{name} to register its job", job, timeout, 0.25, lambda: log_path.read_text()[-3000:])
        triggerer = Triggerer(name, popen.pid, job_id, log_path, popen)
        triggerer.tree()
        self.triggerers.append(triggerer)
        return triggerer

    def triggerer_of_job(self, job_id: int | None) -> Triggerer:
        for triggerer in self.triggerers:
            if triggerer.job_id == job_id:
                return triggerer
        raise DeploymentError(f"no triggerer of this harness has job id {job_id}; known: {self.triggerers}")

    def live_triggerers(self) -> list[Triggerer]:
        return [t for t in self.triggerers if t.alive and not t.stopped]

    def kill_triggerer(self, triggerer: Triggerer, sig: int = signal.SIGKILL) -> None:
        """Kill the whole triggerer (supervisor and runner), as when its machine dies (SIGKILL) or stops."""
        triggerer.tree()
        triggerer.signal(sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            wait_for(f"{triggerer.name} to exit", lambda: not any(_running(pid) for pid in triggerer.pids), 60, 0.1)
        triggerer.alive = False
        if triggerer.popen is not None:
            triggerer.popen.wait(5)

    def pause_triggerer(self, triggerer: Triggerer) -> None:
        triggerer.signal(signal.SIGSTOP)
        triggerer.stopped = True

    def resume_triggerer(self, triggerer: Triggerer) -> None:
        triggerer.signal(signal.SIGCONT)
        triggerer.stopped = False

    def ensure_triggerers(self, count: int) -> list[Triggerer]:
        """At least ``count`` healthy triggerers, starting new ones as needed."""
        while len(self.live_triggerers()) < count:
            self.start_triggerer()
        return self.live_triggerers()

    def keep_triggerers(self, count: int) -> list[Triggerer]:
        """Exactly ``count`` healthy triggerers: start some, or SIGTERM the newest extras (they hand over at once)."""
        self.ensure_triggerers(count)
        for triggerer in reversed(self.live_triggerers()[count:]):
            self.kill_triggerer(triggerer, signal.SIGTERM)
        return self.live_triggerers()

    def worker_processes(self, ti_id: str) -> list[psutil.Process]:
        """The task process(es) running task instance ``ti_id`` (titled ``airflow worker -- <ti id>``)."""
        found = []
        for proc in psutil.process_iter(["pid", "cmdline"]):
            with contextlib.suppress(psutil.Error):
                if f"airflow worker -- {ti_id}" in " ".join(proc.info["cmdline"] or []):
                    found.append(proc)
        return found

    # -- diagnostics ---------------------------------------------------------------------------------------

    def workloads(self, ti_id: str) -> list[dict[str, Any]]:
        """The executor's "Workload finished" records of a task instance: how long each worker phase ran.

        A deferring task holds its worker slot until its supervisor exits, which can be seconds after the
        "Pausing task as DEFERRED" line on a busy machine; this is the slot time the executor saw.
        """
        found = []
        pattern = re.compile(r"(\S+Z) \[info\s*\] Workload finished .*?duration=([0-9.]+) .*?final_state=(\w+)")
        for line in self.standalone_log.read_text(errors="replace").splitlines():
            if f"workload_id={ti_id}" in line and (match := pattern.search(line)):
                found.append(
                    {"finished": match.group(1), "duration_s": float(match.group(2)), "final_state": match.group(3)}
                )
        return found

    def known_airflow_race(self, ti_id: str) -> str:
        """A hint when the scheduler failed the task over a stale executor event (an Airflow 3.3.2 bug)."""
        text = self.standalone_log.read_text(errors="replace")
        if f"ti_id={ti_id}> finished with state success, but the task instance's state attribute is" in text:
            return (
                "NOTE: the scheduler failed this task on the stale 'success' of its deferring workload, which "
                "exited after the trigger had already fired (Airflow race, apache/airflow#72716 and #71580); "
                "the job was too short for this machine's load.\n"
            )
        return ""

    def diagnostics(
        self, dag_id: str | None = None, run_id: str | None = None, task_id: str | None = None, map_index: int = -1
    ) -> str:
        """What to read when a test fails: task states, the task log, and the tails of component logs."""
        parts: list[str] = []
        with contextlib.suppress(Exception):
            if dag_id and run_id:
                tis = self.task_instances(dag_id, run_id)
                parts.append(
                    "task instances: "
                    + json.dumps([(t["task_id"], t["map_index"], t["state"], t["try_number"]) for t in tis])
                )
                for ti in tis:
                    if task_id and ti["task_id"] != task_id:
                        continue
                    if map_index >= 0 and ti["map_index"] != map_index:
                        continue
                    for attempt in range(1, max(1, ti["try_number"]) + 1):
                        with contextlib.suppress(Exception):
                            text = self.task_log_text(dag_id, run_id, ti["task_id"], attempt, ti["map_index"])
                            parts.append(
                                f"--- task log {ti['task_id']}[{ti['map_index']}] try {attempt} ---\n{text[-6000:]}"
                            )
                    break
        with contextlib.suppress(Exception):
            parts.append("triggers: " + repr(self.sql("SELECT id, classpath, triggerer_id FROM trigger")))
            parts.append(
                "triggerer jobs: "
                + repr(
                    self.sql(
                        "SELECT id, state, latest_heartbeat, now() FROM job WHERE job_type = 'TriggererJob' ORDER BY id"
                    )
                )
            )
        for name, path in self.logs.items():
            with contextlib.suppress(Exception):
                parts.append(f"--- {name} log tail ---\n" + path.read_text(errors="replace")[-5000:])
        return "\n".join(parts)


def _fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


def _unwrap_serde(value: Any) -> Any:
    """Strip ``airflow.sdk.serde`` envelopes (``__classname__``/``__data__``) to plain values."""
    if isinstance(value, dict):
        if "__data__" in value and ("__classname__" in value or "__type" in value):
            return _unwrap_serde(value["__data__"])
        if "__var" in value and "__type" in value:
            return _unwrap_serde(value["__var"])
        return {key: _unwrap_serde(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_unwrap_serde(item) for item in value]
    return value


def log_events(entries: list[Any]) -> list[dict[str, Any]]:
    """Log entries as dicts with at least ``event`` (a str) and ``timestamp`` when the log had one."""
    out = []
    for entry in entries:
        if isinstance(entry, dict):
            out.append({**entry, "event": str(entry.get("event", ""))})
        else:
            out.append({"event": str(entry)})
    return out


def first_time(entries: list[dict[str, Any]], needle: str) -> float | None:
    """Epoch seconds of the first log entry whose text contains ``needle``."""
    from datetime import datetime

    for entry in entries:
        if needle in entry["event"] and entry.get("timestamp"):
            return datetime.fromisoformat(str(entry["timestamp"]).replace("Z", "+00:00")).timestamp()
    return None


# -- one deployment per test session ---------------------------------------------------------------------------


#: The photos of the TaskFlow example in the shared deployment: name -> (width, height).
TASKFLOW_PHOTOS = {"beach": (96, 64), "harbour": (120, 80), "tower": (64, 96), "tile": (64, 64)}


class Session:
    """What the standalone tests share: the emulator, the deployment, the example input and a timing record."""

    def __init__(self, root: Path, api_key: str, connection: Callable[..., str], mapped: int = 20) -> None:
        from airflow_flux_redux.emulator import EmulatorConfig, EmulatorServer
        from airflow_flux_redux.emulator.images import sample_image

        self.root = root
        self.api_key = api_key
        self.mapped = mapped
        self.image = root / "input.png"
        self.image.write_bytes(sample_image(96, 64))
        # The TaskFlow example's photos: two wide, one tall, one square (its size follows the orientation).
        self.photos = root / "photos"
        self.photos.mkdir()
        for name, (width, height) in TASKFLOW_PHOTOS.items():
            (self.photos / f"{name}.png").write_bytes(sample_image(width, height))
        self.output = root / "out"
        self.timings_path = root / "standalone-timings.json"
        self.timings: dict[str, Any] = {"tests": {}, "jobs": {}}
        # A separate process, as fal is: the Airflow components reach it over loopback only.
        self.emulator = EmulatorServer(
            EmulatorConfig(key=api_key, queue_seconds=0.5, run_seconds=1.5, log_lines=3), in_process=False
        )
        self.emulator.start()
        try:
            self.deployment = Deployment(
                root / "deployment",
                dag_files=[
                    ROOT / "dags_examples" / "example_flux_redux.py",
                    ROOT / "dags_examples" / "example_flux_redux_taskflow.py",
                    *sorted(E2E_DAGS.glob("*.py")),
                ],
                env={
                    "AIRFLOW_CONN_FLUX_REDUX_DEFAULT": connection(self.emulator.url),
                    "FLUX_REDUX_EXAMPLE_IMAGE": str(self.image),
                    "FLUX_REDUX_EXAMPLE_OUTPUT": str(self.output),
                    "FLUX_REDUX_E2E_MAPPED": str(mapped),
                    "FLUX_REDUX_TASKFLOW_PHOTOS": str(self.photos),
                },
                dag_ids=[
                    "example_flux_redux",
                    "example_flux_redux_taskflow",
                    "e2e_flux_redux_sync_retry",
                    "e2e_flux_redux_mapped",
                ],
            )
            self.deployment.start()
        except BaseException:
            self.emulator.stop()
            raise
        self.timings["startup_seconds"] = round(self.deployment.startup_seconds, 2)
        self.write_timings()

    def reset_emulator(self, **timing: float) -> None:
        self.emulator.reset()
        self.emulator.configure(
            **{"queue_seconds": 0.5, "run_seconds": 1.5, "log_lines": 3, "result_ttl": 3600.0, **timing}
        )

    def record_test(self, name: str, seconds: float) -> None:
        self.timings["tests"][name] = round(seconds, 2)
        self.write_timings()

    def record_jobs(self, name: str, slots: list[dict[str, Any]]) -> None:
        self.timings["jobs"][name] = slots
        self.write_timings()

    def write_timings(self) -> None:
        tests = sum(self.timings["tests"].values())
        self.timings["tests_wall_seconds"] = round(tests, 2)
        self.timings["standalone_wall_seconds"] = round(tests + self.timings.get("startup_seconds", 0.0), 2)
        self.timings_path.write_text(json.dumps(self.timings, indent=2))

    def stop(self) -> None:
        try:
            self.deployment.stop()
        finally:
            self.emulator.stop()
        self.write_timings()
        print(f"\nstandalone e2e timings: {json.dumps(self.timings)}\nwritten to {self.timings_path}")


_SESSION: Session | None = None


def shared_session(root_factory: Callable[[], Path], api_key: str, connection: Callable[..., str]) -> Session:
    """The one Session of this test process (the fixture of each test module returns the same one)."""
    global _SESSION
    if _SESSION is None:
        _SESSION = Session(root_factory(), api_key, connection)
    return _SESSION


def stop_shared_session() -> None:
    global _SESSION
    if _SESSION is not None:
        session, _SESSION = _SESSION, None
        session.stop()


def worker_slot_seconds(
    entries: list[Any], ti: dict[str, Any] | None = None, deployment: Deployment | None = None
) -> dict[str, float | None]:
    """How long each worker phase held its slot, from the task log's timestamps and the executor's records.

    ``ti_start_to_defer_s``: from the task instance's start_date (the API marked it running) to the
    "Pausing task as DEFERRED" line; ``start_to_defer_s`` from the task's first log line;
    ``submit_to_defer_s`` from the "Submitted fal request" line; ``resume_phase_s`` the resumed phase;
    ``defer_workload_s`` / ``resume_workload_s``: the executor's whole workload durations (process start
    to supervisor exit) of the deferring and the resumed phase.
    """
    from datetime import datetime

    events = log_events(entries)
    ti_start = None
    if ti and ti.get("start_date"):
        ti_start = datetime.fromisoformat(str(ti["start_date"]).replace("Z", "+00:00")).timestamp()
    start = first_time(events, "::group::Pre Execute")
    submitted = first_time(events, "Submitted fal request")
    deferred = first_time(events, "Pausing task as DEFERRED")
    resumed = None
    # The resumed phase starts at the second "Pre Execute" group, after the trigger's lines.
    pre = [e for e in events if "::group::Pre Execute" in e["event"] and e.get("timestamp")]
    if len(pre) > 1:
        resumed = first_time([pre[1]], "")
    end = first_time(list(reversed(events)), "")
    workloads: list[dict[str, Any]] = []
    if deployment is not None and ti:
        # The supervisor logs "Workload finished" just after the task's final state: give it a moment.
        deadline = time.monotonic() + 10
        while True:
            workloads = deployment.workloads(ti["id"])
            done = {w["final_state"] for w in workloads}
            if time.monotonic() > deadline or ti.get("state") not in ("success", "failed") or ti["state"] in done:
                break
            time.sleep(0.2)
    by_state = {w["final_state"]: w["duration_s"] for w in workloads}
    return {
        "defer_workload_s": by_state.get("deferred"),
        "resume_workload_s": by_state.get("success"),
        "ti_start_to_defer_s": _delta(ti_start, deferred),
        "start_to_defer_s": _delta(start, deferred),
        "submit_to_defer_s": _delta(submitted, deferred),
        "resume_phase_s": _delta(resumed, end),
    }


def _delta(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(b - a, 3)


def session_fixture(tmp_path_factory: Any, api_key: str, connection: Callable[..., str]) -> Iterator[Session]:
    """Body of each test module's session fixture: one deployment for the whole pytest session."""
    try:
        yield shared_session(lambda: tmp_path_factory.mktemp("standalone"), api_key, connection)
    finally:
        stop_shared_session()


@contextlib.contextmanager
def timed(session: Session, name: str) -> Iterator[None]:
    """Record the wall time of one test (also when it fails) in the session's timing file."""
    started = time.monotonic()
    try:
        yield
    finally:
        seconds = time.monotonic() - started
        session.record_test(name, seconds)
        print(f"\n{name}: {seconds:.1f} s wall (timings: {session.timings_path})")


def wait_trigger_running(
    session: Session, dag_id: str, run_id: str, task_id: str, map_index: int = -1, timeout: float = 60.0
) -> dict[str, Any]:
    """The trigger row once a triggerer runs it and has polled its request at least once."""
    deployment = session.deployment

    def probe() -> dict[str, Any] | None:
        row = deployment.trigger_row(dag_id, run_id, task_id, map_index)
        if row is None or row["triggerer_id"] is None:
            return None
        job = session.emulator.stats()["requests"].get(row["kwargs"]["handle"]["request_id"], {})
        return row if job.get("status_polls", 0) + job.get("stream_opens", 0) > 0 else None

    return wait_for(
        f"the trigger of {dag_id}/{task_id} to be polling",
        probe,
        timeout,
        0.2,
        lambda: deployment.diagnostics(dag_id, run_id, task_id, map_index),
    )


def check_images(result: dict[str, Any], count: int, size: tuple[int, int] | None = None) -> list[Path]:
    """The images of an operator result exist on disk and decode; returns their paths."""
    from PIL import Image

    images = result["images"]
    assert len(images) == count, result
    paths = []
    for image in images:
        assert image["path"], image
        path = Path(str(image["path"]).removeprefix("file://"))
        assert path.is_file(), f"{path} missing"
        with Image.open(path) as decoded:
            decoded.load()
            if size is not None:
                assert decoded.size == size, (path, decoded.size)
        paths.append(path)
    return paths


def start_deferred_run(
    session: Session, dag_id: str, task_id: str, *, queue_seconds: float, run_seconds: float, triggerers: int
) -> tuple[str, dict[str, Any]]:
    """Trigger ``dag_id`` with ``triggerers`` triggerers up; return its run id and the running trigger's row."""
    deployment = session.deployment
    session.reset_emulator(queue_seconds=queue_seconds, run_seconds=run_seconds)
    deployment.keep_triggerers(triggerers)
    run_id = deployment.trigger(dag_id)
    deployment.wait_task(dag_id, run_id, task_id, ["deferred"], timeout=90)
    return run_id, wait_trigger_running(session, dag_id, run_id, task_id)


# -- mapped runs of real-speed jobs (tests/e2e/test_fast_jobs.py, benchmarks/bench_fast_jobs.py) ------------------


def wait_parsed(deployment: Deployment, dag_ids: Iterable[str], timeout: float = 120.0) -> None:
    """Return once the dag processor has parsed every DAG in ``dag_ids`` (files copied in at start)."""
    for dag_id in dag_ids:
        wait_for(
            f"DAG {dag_id} to be parsed",
            lambda dag_id=dag_id: bool(deployment.api("GET", f"dags/{dag_id}", ok=(200, 404)).get("dag_id")),
            timeout,
            1.0,
            deployment.diagnostics,
        )


def job_completed_at(emulator_url: str, request_id: str, api_key: str) -> float:
    """Epoch time the emulator completed a job: its first log line is stamped at the run's start.

    The status URL is fal's documented layout (``{base}/fal-ai/flux-1/requests/{id}/status``): a task that
    reconnected on retry pushed no status URL to XCom.
    """
    from datetime import datetime

    status = httpx.get(
        f"{emulator_url}/fal-ai/flux-1/requests/{request_id}/status",
        params={"logs": 1},
        headers={"Authorization": f"Key {api_key}"},
        timeout=10,
    )
    body = status.raise_for_status().json()
    started = datetime.fromisoformat(body["logs"][0]["timestamp"]).timestamp()
    return started + float(body["metrics"].get("inference_time", 0.0))


def try_ids(deployment: Deployment, dag_id: str, run_id: str, task_id: str, map_index: int) -> list[str]:
    """The task instance id of every try of one task (Airflow 3 gives each try its own id)."""
    where = "dag_id = %s AND run_id = %s AND task_id = %s AND map_index = %s"
    key = (dag_id, run_id, task_id, map_index)
    rows = deployment.sql(
        f"SELECT CAST(task_instance_id AS text) FROM task_instance_history WHERE {where} "
        f"UNION SELECT CAST(id AS text) FROM task_instance WHERE {where}",
        key + key,
    )
    return [row[0] for row in rows]


def mapped_figures(session: Session, dag_id: str, run_id: str, task_id: str) -> list[dict[str, Any]]:
    """Per mapped task: state, tries, request id, task end - job completed, worker seconds, deferrals.

    ``end_after_job_s`` is the task's end_date (REST API) minus the time the emulator completed its job;
    ``worker_s`` sums the executor's workload durations over every try and phase (the slot time it held);
    ``deferred_exit`` is the ISO time the first deferring workload exited.
    """
    from datetime import datetime

    from airflow_flux_redux.links import XCOM_REQUEST_ID

    d = session.deployment
    figures = []
    for ti in sorted(d.task_instances(dag_id, run_id), key=lambda t: t["map_index"]):
        index = ti["map_index"]
        ids = try_ids(d, dag_id, run_id, task_id, index)

        def finished(ids: list[str] = ids, state: str = ti["state"]) -> list[dict[str, Any]] | None:
            # The supervisor logs "Workload finished" just after the task's final state: give it a moment.
            found = [w for ti_id in ids for w in d.workloads(ti_id)]
            return found if any(w["final_state"] == state for w in found) else None

        with contextlib.suppress(DeploymentError):
            wait_for(f"the last workload of {task_id}[{index}]", finished, 15.0, 0.5)
        workloads = [w for ti_id in ids for w in d.workloads(ti_id)]
        entry: dict[str, Any] = {
            "map_index": index,
            "state": ti["state"],
            "tries": ti["try_number"],
            "worker_s": round(sum(w["duration_s"] for w in workloads), 2),
            "deferrals": sum(w["final_state"] == "deferred" for w in workloads),
            # When the first deferring workload exited (the executor's record): Airflow's race is open until then.
            "deferred_exit": next((w["finished"] for w in workloads if w["final_state"] == "deferred"), None),
            "request_id": None,
            "end_after_job_s": None,
        }
        with contextlib.suppress(DeploymentError):
            # The result names the request also after a reconnecting retry; a failed task has only the id XCom.
            key = "return_value" if ti["state"] == "success" else XCOM_REQUEST_ID
            value = d.xcom(dag_id, run_id, task_id, key, index)
            entry["request_id"] = value["request_id"] if isinstance(value, dict) else value
        if entry["request_id"] and ti["end_date"]:
            ended = datetime.fromisoformat(str(ti["end_date"]).replace("Z", "+00:00")).timestamp()
            done = job_completed_at(session.emulator.url, entry["request_id"], session.api_key)
            entry["end_after_job_s"] = round(ended - done, 3)
        figures.append(entry)
    return figures


def percentile(values: list[float], share: float) -> float | None:
    """The nearest-rank percentile (share in 0..1) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def print_figures(title: str, figures: list[dict[str, Any]]) -> None:
    print(f"\n{title}\n{'task':>4} {'state':>8} {'tries':>5} {'defers':>6} {'worker s':>8} {'end-job s':>9}  request")
    for f in figures:
        late = "-" if f["end_after_job_s"] is None else f"{f['end_after_job_s']:.2f}"
        print(
            f"{f['map_index']:>4} {f['state']:>8} {f['tries']:>5} {f['deferrals']:>6} {f['worker_s']:>8.2f} "
            f"{late:>9}  {f['request_id']}"
        )
