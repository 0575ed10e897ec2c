"""Record the parser fixtures in tests/fixtures/ from the real clients (Debian packages).

``.venv/bin/python -m tests.record_fixtures`` runs collectd (write_kafka in each format) against
an embedded broker, and Prometheus scraping node_exporter with remote_write to a local HTTP
endpoint, and saves what they sent. The unit tests (tests/test_input_formats.py) parse these.
"""

from __future__ import annotations

import base64
import json
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

from tests.realclients import (
    NODE_EXPORTER,
    PROMETHEUS,
    collectd_config,
    consume_all,
    run_collectd,
    wheel_librdkafka,
)
from vigil.devtools.embedded import create_topics, free_port, start_broker

FIXTURES = Path(__file__).parent / "fixtures"

COLLECTD_TOPICS = {
    "collectd-json": "Format JSON",
    "collectd-json-raw": "Format JSON\n    StoreRates false",
    "collectd-graphite": 'Format Graphite\n    GraphitePrefix "collectd."',
    "collectd-graphite-rates": 'Format Graphite\n    GraphitePrefix "collectd."\n'
                               "    StoreRates true",
    "collectd-graphite-tags": "Format Graphite\n    GraphiteUseTags true",
    "collectd-command": "Format Command",
}


def record_collectd(work: Path, keep: int = 200) -> None:
    broker = start_broker()
    try:
        create_topics(broker.address, {t: 1 for t in COLLECTD_TOPICS})
        conf = collectd_config(work / "collectd.conf", broker.address, COLLECTD_TOPICS)
        run_collectd(conf, 5, wheel_librdkafka(work / "lib"))
        for topic in COLLECTD_TOPICS:
            records = consume_all(broker.address, topic, timeout_s=10, idle_s=2)
            text = [r.decode() for r in records[:keep]]
            (FIXTURES / f"{topic}.json").write_text(json.dumps(text, indent=0) + "\n")
    finally:
        broker.stop()


class _Sink(BaseHTTPRequestHandler):
    bodies: list[bytes] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def prometheus_config(path: Path, node_port: int, write_url: str, extra_targets=()) -> Path:
    targets = json.dumps([f"127.0.0.1:{node_port}", *extra_targets])
    path.write_text(f"""global:
  scrape_interval: 1s
scrape_configs:
  - job_name: node
    static_configs:
      - targets: {targets}
remote_write:
  - url: {write_url}
    queue_config:
      batch_send_deadline: 1s
      max_samples_per_send: 2000
    metadata_config:
      send_interval: 2s
""")
    return path


def start_node_exporter(port: int) -> subprocess.Popen:
    return subprocess.Popen(
        [NODE_EXPORTER, f"--web.listen-address=127.0.0.1:{port}", "--collector.disable-defaults",
         "--collector.cpu", "--collector.meminfo", "--collector.loadavg", "--collector.netdev"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def start_prometheus(config: Path, data: Path, port: int) -> subprocess.Popen:
    return subprocess.Popen(
        [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={data}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def record_prometheus(work: Path, seconds: float = 8) -> None:
    server = HTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    node_port = free_port()
    url = f"http://127.0.0.1:{server.server_port}/api/v1/write"
    config = prometheus_config(work / "prometheus.yml", node_port, url)
    procs = [start_node_exporter(node_port),
             start_prometheus(config, work / "tsdb", free_port())]
    try:
        time.sleep(seconds)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)
        server.shutdown()
    bodies = [base64.b64encode(b).decode() for b in _Sink.bodies[:6]]
    (FIXTURES / "prometheus-remote-write.json").write_text(json.dumps(bodies, indent=0) + "\n")


def main() -> None:
    FIXTURES.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        record_collectd(work)
        record_prometheus(work)
    for path in sorted(FIXTURES.iterdir()):
        print(path, path.stat().st_size)


if __name__ == "__main__":
    main()
