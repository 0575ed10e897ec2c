"""Everything that leaves the process: the alert pipeline and its delivery engine, the
channels (email, Telegram), ClickHouse, the live dashboard, charts and Prometheus metrics."""
