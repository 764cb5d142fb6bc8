"""Redaction by construction: registered secrets and token-shaped strings never reach any log sink."""

from __future__ import annotations

import io
import logging

from agent import log as agentlog

JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJjbGllbnQtMTIzNCJ9.c2lnbmF0dXJlLWJ5dGVzLWhlcmU"


def _capture(level="debug"):
    stream = io.StringIO()
    buf = agentlog.LogBuffer(10)
    logger = agentlog.setup(level, buf, stream)
    return logger, stream, buf


def test_registered_secret_is_masked_everywhere():
    logger, stream, buf = _capture()
    secret = "5f0c8a1e-1b2c-4d3e-9f00-abcdefabcdef"
    agentlog.REDACTOR.add(secret)
    logger.info("got secret %s from upstream", secret)
    logger.error("failed with %r", {"client_secret": secret})
    out = stream.getvalue() + "\n".join(buf.tail(10))
    assert secret not in out
    assert "[REDACTED]" in out


def test_jwt_bearer_and_key_value_patterns_are_masked():
    logger, stream, buf = _capture()
    logger.info("token %s", JWT)
    logger.info("header Authorization: Bearer abcdefghijklmnop1234")
    logger.info("form client_id=abc&client_secret=s3cr3tvalue&grant_type=client_credentials")
    logger.info('json {"access_token": "opaque-token-value-123"}')
    out = stream.getvalue()
    for s in (JWT, "abcdefghijklmnop1234", "s3cr3tvalue", "opaque-token-value-123"):
        assert s not in out, s
    assert "client_id=abc" in out  # non-secrets stay readable


def test_exceptions_are_reduced_to_type_and_message():
    logger, stream, _ = _capture()
    try:
        raise ValueError("bad thing with " + JWT)
    except ValueError:
        logger.exception("while parsing")
    out = stream.getvalue()
    assert "ValueError" in out and "Traceback" not in out and JWT not in out


def test_journal_prefix(monkeypatch):
    monkeypatch.setenv("JOURNAL_STREAM", "8:1234")
    logger, stream, _ = _capture()
    logger.warning("careful")
    logger.debug("details")
    assert stream.getvalue().splitlines() == ["<4>careful", "<7>details"]


def test_level_filtering_and_ring_buffer_subscribers():
    logger, stream, buf = _capture("warning")
    seen = []
    buf.subscribe(seen.append)
    logger.info("hidden")
    logger.warning("shown")
    assert "hidden" not in stream.getvalue()
    assert len(seen) == 1 and seen[0].endswith("shown")
    buf.unsubscribe(seen.append)
    for i in range(20):
        logger.error("line %d", i)
    assert len(buf.tail(100)) == 10 and buf.tail(1)[0].endswith("line 19")
    assert len(seen) == 1


def test_mask_helper():
    assert agentlog.mask(None) == "<none>"
    m = agentlog.mask("abcdefghijkl")
    assert m.startswith("abcd") and "12 chars" in m and "efgh" not in m


def teardown_module(module):
    logging.getLogger(agentlog.LOGGER_NAME).handlers.clear()
