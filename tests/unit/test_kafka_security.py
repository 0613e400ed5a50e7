"""Kafka security settings reach every client from the environment."""
import asyncio

import faust

from stream.app import broker_credentials
from stream.kafka import consumer, producer, security_options


def test_plaintext_by_default(monkeypatch):
    for k in ("VIGIL_KAFKA_SECURITY_PROTOCOL", "VIGIL_KAFKA_SASL_MECHANISM"):
        monkeypatch.delenv(k, raising=False)
    assert security_options() == {} and broker_credentials() is None


def test_sasl_scram_over_tls_reaches_aiokafka_and_faust(monkeypatch):
    monkeypatch.setenv("VIGIL_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("VIGIL_KAFKA_SASL_MECHANISM", "SCRAM-SHA-256")
    monkeypatch.setenv("VIGIL_KAFKA_SASL_USERNAME", "vigil")
    monkeypatch.setenv("VIGIL_KAFKA_SASL_PASSWORD", "pw")
    opts = security_options()
    assert opts["security_protocol"] == "SASL_SSL" and opts["sasl_mechanism"] == "SCRAM-SHA-256"
    assert opts["sasl_plain_username"] == "vigil" and opts["ssl_context"] is not None

    async def clients():  # aiokafka clients are made inside a running loop
        return consumer("127.0.0.1:1"), producer("127.0.0.1:1")
    c, p = asyncio.run(clients())
    assert c._client._security_protocol == "SASL_SSL" and p.client._sasl_mechanism == "SCRAM-SHA-256"
    creds = broker_credentials()
    assert isinstance(creds, faust.SASLCredentials) and creds.username == "vigil"
    assert creds.ssl_context is not None and creds.mechanism.value == "SCRAM-SHA-256"


def test_tls_only(monkeypatch):
    monkeypatch.setenv("VIGIL_KAFKA_SECURITY_PROTOCOL", "ssl")
    opts = security_options()
    assert opts["security_protocol"] == "SSL" and "sasl_mechanism" not in opts
    assert isinstance(broker_credentials(), faust.SSLCredentials)
