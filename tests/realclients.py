"""Real third-party clients for the input tests: Debian's collectd, Prometheus, node_exporter.

Debian's librdkafka (2.0.2, used by collectd's write_kafka and kcat) cannot talk to the
embedded broker; the librdkafka inside the confluent-kafka wheel can, so those processes get
a directory holding it as ``librdkafka.so.1`` on ``LD_LIBRARY_PATH`` (docs/inputs.md).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import confluent_kafka
from confluent_kafka import Consumer

COLLECTD = "/usr/sbin/collectd"
PROMETHEUS = "/usr/bin/prometheus"
NODE_EXPORTER = "/usr/bin/prometheus-node-exporter"


def wheel_librdkafka(directory: Path) -> Path:
    """``directory`` with the confluent-kafka wheel's librdkafka linked as librdkafka.so.1."""
    libs = Path(confluent_kafka.__file__).parent.parent / "confluent_kafka.libs"
    (lib,) = libs.glob("librdkafka*.so*")
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / "librdkafka.so.1"
    if not target.exists():
        target.symlink_to(lib)
    return directory


def collectd_config(path: Path, broker: str, topics: dict[str, str], host: str = "vigil-test",
                    interval_s: float = 1) -> Path:
    """A collectd.conf: cpu, memory, interface, load every ``interval_s`` to ``topics``
    (topic → the lines of its ``<Topic>`` block, e.g. ``Format JSON``) via write_kafka."""
    blocks = "\n".join(f'  <Topic "{topic}">\n    {body}\n  </Topic>'
                       for topic, body in topics.items())
    path.write_text(f"""Hostname "{host}"
FQDNLookup false
Interval {interval_s}
BaseDir "{path.parent}"
PIDFile "{path.parent}/collectd.pid"
TypesDB "/usr/share/collectd/types.db"
LoadPlugin cpu
LoadPlugin memory
LoadPlugin interface
LoadPlugin load
LoadPlugin write_kafka
<Plugin interface>
  Interface "lo"
</Plugin>
<Plugin write_kafka>
  Property "metadata.broker.list" "{broker}"
{blocks}
</Plugin>
""")
    return path


def run_collectd(config: Path, seconds: float, libdir: Path) -> str:
    """Run collectd in the foreground for ``seconds``; its log."""
    env = {**os.environ, "LD_LIBRARY_PATH": str(libdir)}
    log = config.parent / "collectd.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([COLLECTD, "-f", "-C", str(config)], env=env, stdout=out,
                                stderr=subprocess.STDOUT)
        try:
            time.sleep(seconds)
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return log.read_text(errors="replace")


def consume_all(broker: str, topic: str, timeout_s: float = 15, idle_s: float = 3) -> list[bytes]:
    """Every record of ``topic`` (from the start), until ``idle_s`` passes with none."""
    consumer = Consumer({"bootstrap.servers": broker, "group.id": f"read-{topic}-{time.time()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "session.timeout.ms": 6000})
    consumer.subscribe([topic])
    records: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    last = time.monotonic()
    try:
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None or message.error():
                if records and time.monotonic() - last > idle_s:
                    break
                continue
            records.append(message.value())
            last = time.monotonic()
    finally:
        consumer.close()
    return records


def have(*binaries: str) -> bool:
    return all(shutil.which(b) or os.path.exists(b) for b in binaries)
