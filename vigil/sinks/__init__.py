"""Everything that leaves the process besides Kafka topics: ClickHouse, email, Telegram,
the live dashboard (see the issues that build them)."""
