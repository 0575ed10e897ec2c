"""One Kafka client configuration: the same ``VIGIL_KAFKA_*`` settings reach Faust, aiokafka
(the dashboard's consumer) and confluent-kafka (producers, admin clients) alike."""

from __future__ import annotations

import ssl

import certifi
import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from pydantic import ValidationError

from vigil.streams.app import new_app
from vigil.streams.settings import Settings


def settings(**kafka) -> Settings:
    return Settings(kafka_bootstrap="broker-1:9093,broker-2:9093", web_enabled=False, **kafka)


def test_the_default_is_plaintext_everywhere():
    s = settings()
    assert s.kafka_client_config() == {
        "bootstrap.servers": "broker-1:9093,broker-2:9093", "security.protocol": "PLAINTEXT",
    }
    assert s.kafka_client_config("other:9092")["bootstrap.servers"] == "other:9092"
    assert s.kafka_broker_credentials() is None
    assert s.kafka_aiokafka_security() == {"security_protocol": "PLAINTEXT"}
    assert credentials_to_aiokafka_auth(None) == s.kafka_aiokafka_security()


@pytest.mark.parametrize("protocol", ["SASL_SSL", "SASL_PLAINTEXT"])
@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-512"])
def test_sasl_settings_match_in_faust_aiokafka_and_librdkafka(protocol, mechanism):
    s = settings(
        kafka_security_protocol=protocol, kafka_sasl_mechanism=mechanism,
        kafka_sasl_username="vigil", kafka_sasl_password="s3cret",
        kafka_ssl_cafile=certifi.where(),
    )
    tls = protocol == "SASL_SSL"
    librdkafka = s.kafka_client_config()
    assert librdkafka == {
        "bootstrap.servers": "broker-1:9093,broker-2:9093",
        "security.protocol": protocol,
        "sasl.mechanism": mechanism,
        "sasl.username": "vigil",
        "sasl.password": "s3cret",
        **({"ssl.ca.location": certifi.where()} if tls else {}),
    }
    # What Faust's aiokafka driver hands its consumer, producer and admin client …
    faust_auth = dict(credentials_to_aiokafka_auth(s.kafka_broker_credentials()))
    # … and what the dashboard's own aiokafka consumer gets.
    dashboard = s.kafka_aiokafka_security()
    for auth in (faust_auth, dashboard):
        assert auth["security_protocol"] == librdkafka["security.protocol"]
        assert auth["sasl_mechanism"] == librdkafka["sasl.mechanism"]
        assert auth["sasl_plain_username"] == librdkafka["sasl.username"]
        assert auth["sasl_plain_password"] == librdkafka["sasl.password"]
        context = auth.get("ssl_context")
        assert (context is not None) == tls
        if tls:
            assert isinstance(context, ssl.SSLContext)
            assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    # The worker's Faust app is built with those credentials.
    app = new_app(s, "vigil-test", 16066)
    assert dict(credentials_to_aiokafka_auth(app.conf.broker_credentials)).keys() == \
        faust_auth.keys()
    assert "s3cret" not in repr(s)


def test_tls_without_sasl():
    s = settings(kafka_security_protocol="SSL", kafka_ssl_cafile=certifi.where())
    assert s.kafka_client_config() == {
        "bootstrap.servers": "broker-1:9093,broker-2:9093", "security.protocol": "SSL",
        "ssl.ca.location": certifi.where(),
    }
    faust_auth = credentials_to_aiokafka_auth(s.kafka_broker_credentials())
    assert faust_auth["security_protocol"] == "SSL"
    assert isinstance(faust_auth["ssl_context"], ssl.SSLContext)
    assert s.kafka_aiokafka_security().keys() == faust_auth.keys()


def test_the_kafka_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("VIGIL_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("VIGIL_KAFKA_SASL_MECHANISM", "SCRAM-SHA-256")
    monkeypatch.setenv("VIGIL_KAFKA_SASL_USERNAME", "svc")
    monkeypatch.setenv("VIGIL_KAFKA_SASL_PASSWORD", "pw")
    config = Settings().kafka_client_config("b:9092")
    assert config["sasl.mechanism"] == "SCRAM-SHA-256" and config["sasl.password"] == "pw"


def test_sasl_needs_a_user_and_a_password():
    with pytest.raises(ValidationError, match="kafka_sasl_username"):
        settings(kafka_security_protocol="SASL_SSL", kafka_sasl_username="vigil")


async def test_the_dashboard_feed_consumes_with_the_security_settings(monkeypatch):
    import asyncio

    import aiokafka

    from vigil.sinks.dashboard import AnomalyFeed

    built: list[dict] = []

    class Consumer:
        def __init__(self, **kwargs) -> None:
            built.append(kwargs)

        async def start(self) -> None:
            raise asyncio.CancelledError

        async def stop(self) -> None:
            pass

    monkeypatch.setattr(aiokafka, "AIOKafkaConsumer", Consumer)
    s = settings(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_username="vigil",
                 kafka_sasl_password="s3cret")
    feed = AnomalyFeed(s.kafka_bootstrap, "anomalies", security=s.kafka_aiokafka_security())
    with pytest.raises(asyncio.CancelledError):
        await feed.run()
    (kwargs,) = built
    assert kwargs["bootstrap_servers"] == "broker-1:9093,broker-2:9093"
    assert {k: kwargs[k] for k in s.kafka_aiokafka_security()} == s.kafka_aiokafka_security()
