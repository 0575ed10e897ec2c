"""The ``vigil`` command line: worker, generate, replay, demo, bench."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import typer

from vigil.streams.settings import Settings

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="vigil — real-time anomaly detection for IT telemetry in Kafka.",
)


@app.command()
def worker() -> None:
    """Run the detection worker (settings from VIGIL_* environment variables)."""
    from faust.worker import Worker

    from vigil.streams.app import create_app

    settings = Settings()
    faust_app = create_app(settings)
    logging.getLogger("vigil").setLevel(settings.log_level.upper())
    try:
        Worker(faust_app, loglevel=settings.log_level, quiet=True).execute_from_commandline()
    finally:
        if getattr(faust_app, "vigil_restart", False):
            # The input pattern matches other topics now: start afresh with the new set.
            os.execv(sys.executable, [sys.executable, "-m", "vigil.streams.cli", "worker"])


@app.command()
def generate(
    out: Path = typer.Option(Path("telemetry"), help="Folder to write."),
    hosts: int = typer.Option(3, min=1, help="Number of hosts."),
    metrics: str = typer.Option("all", help="Comma-separated metric names, or 'all'."),
    days: float = typer.Option(30.0, min=1.0, help="Length of the recording."),
    step: int = typer.Option(60, min=1, help="Seconds between points."),
    seed: int = typer.Option(7, help="Random seed (same seed, same data)."),
    anomalies: float = typer.Option(3.0, help="Labelled anomalies per series."),
) -> None:
    """Write realistic labelled telemetry: points.csv, labels.csv, manifest.json."""
    from vigil.detectors.datasets import write_telemetry
    from vigil.detectors.synthetic import ALL_METRICS, generate_telemetry

    chosen = ALL_METRICS if metrics == "all" else [m.strip() for m in metrics.split(",")]
    t = generate_telemetry(
        hosts=hosts, metrics=chosen, days=days, step_s=step, seed=seed,
        anomalies_per_series=anomalies,
    )
    folder = write_telemetry(t, out)
    typer.echo(
        f"wrote {t.n_points:,} points of {len(t.series)} series and {len(t.labels)} labelled "
        f"anomalies to {folder}"
    )


@app.command()
def replay(
    path: Path = typer.Argument(..., help="A CSV file, a NAB folder or a generator folder."),
    topic: str = typer.Option("metrics", help="Topic to write to."),
    bootstrap: str = typer.Option(None, help="Kafka bootstrap (default: VIGIL_KAFKA_BOOTSTRAP)."),
    speed: float = typer.Option(0.0, help="× real time (10000 = a month in ~4 min); 0 = max."),
    batch: int = typer.Option(100, min=1, help="Points per Kafka message."),
    fmt: str = typer.Option("json", "--format", help="json or influx."),
    shift_to_now: bool = typer.Option(True, help="Move timestamps so the data ends now."),
) -> None:
    """Send recorded telemetry into a topic, in time order."""
    from tqdm import tqdm

    from vigil.detectors.datasets import load_dataset
    from vigil.streams.replay import replay as run_replay

    dataset = load_dataset(path)
    target = bootstrap or Settings().kafka_bootstrap
    shift = time.time_ns() // 1_000_000 if shift_to_now else None
    with tqdm(total=dataset.n_points, unit="pt", unit_scale=True, desc="replay") as bar:
        sent = run_replay(
            dataset, target, topic, speed=speed, batch=batch, fmt=fmt, shift_to_ms=shift,
            progress=bar.update,
        )
    typer.echo(f"sent {sent:,} points of {len(dataset.series)} series to {topic}")


@app.command()
def demo(
    hosts: int = typer.Option(3, min=1, help="Hosts to simulate (7 metrics each)."),
    days: float = typer.Option(30.0, min=2.0, help="Days of 1-minute telemetry."),
    seed: int = typer.Option(7, help="Random seed of the generated telemetry."),
) -> None:
    """Run the whole pipeline on generated telemetry and compare incidents with the labels."""
    from vigil.streams.demo import run_demo

    raise typer.Exit(run_demo(hosts=hosts, days=days, seed=seed))


@app.command()
def bench(
    quick: bool = typer.Option(False, help="Smaller sizes; finishes in under a minute."),
) -> None:
    """Measure detector and end-to-end throughput; prints `name: value unit` lines."""
    from bench.run import run_all

    run_all(quick=quick)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
