"""Redaction by construction: registered secrets and token-shaped strings never reach any log sink."""

from __future__ import annotations

import io
import logging

import pytest

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


@pytest.mark.parametrize("line, secret", [
    ("console password=hunter2-Correct", "hunter2-Correct"),            # issue 21: password= was unmasked
    ("PASSWORD: 'Tr0ub4dor&3x'", "Tr0ub4dor"),
    ('{"password": "opaque-pass-value"}', "opaque-pass-value"),
    ("secret=plain-secret-value", "plain-secret-value"),
    ("client_secret: another-secret-42", "another-secret-42"),
    ("access_token=tok-value-9876", "tok-value-9876"),
])
def test_each_key_value_form_is_masked(line, secret):
    logger, stream, _ = _capture()
    logger.info("%s", line)
    out = stream.getvalue()
    assert secret not in out, out
    key = line.split("=")[0].split(":")[0].strip(' {"\'').lower()
    assert key in out.lower()  # the key stays readable: the reader sees what was masked


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


FORGED = "x\nERROR   forged line\x1b[2J\r\x7f\x85\x9b\u2028end"


def test_control_characters_from_a_peer_are_escaped_on_one_line():
    logger, stream, buf = _capture()
    logger.info("player reported HTTP %s (%s): %s", 401, "Enhanced Error " + FORGED, "reregister")
    out = stream.getvalue()
    assert out.count("\n") == 1 and out.endswith("\n")
    line = out.rstrip("\n")
    assert "\x1b" not in line and "\r" not in line and "\x85" not in line and "\x9b" not in line
    for visible in ("\\n", "\\x1b[2J", "\\r", "\\x7f", "\\x85", "\\x9b", "\\u2028"):
        assert visible in line, visible
    assert line.startswith("INFO    player reported HTTP 401") and line.endswith("): reregister")
    assert buf.tail(1) == [line]  # the console's ring buffer gets the same single line


def test_control_characters_in_objects_and_exceptions_are_escaped(monkeypatch):
    monkeypatch.setenv("JOURNAL_STREAM", "8:1234")
    logger, stream, _ = _capture()
    logger.warning("upstream said %s; %r; %d", ValueError("bad\n<3>forged"), {"k": "v\x1b[31m"}, 7)
    try:
        raise RuntimeError("evil\n<2>crit\x1b]0;title\x07")
    except RuntimeError:
        logger.exception("while reading %s", "a\tb")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].startswith("<4>upstream said bad\\n<3>forged;")
    assert "\\x1b[31m" in lines[0] and lines[0].endswith("; 7")
    assert lines[1].startswith("<3>while reading a\\tb [RuntimeError: ") and "\\x1b]0;title\\x07" in lines[1]
    assert not any(c in stream.getvalue() for c in "\x1b\x07\t")


def test_the_agents_own_multi_line_message_stays_one_record(monkeypatch):
    monkeypatch.setenv("JOURNAL_STREAM", "8:1234")
    logger, stream, _ = _capture()
    logger.error("reload: the new configuration is invalid and was NOT applied:\n%s", "line one\n<6>line two")
    lines = stream.getvalue().splitlines()
    # The template's own line break continues the record (same priority, indented); the argument's is escaped.
    assert lines == ["<3>reload: the new configuration is invalid and was NOT applied:",
                     "<3>  line one\\n<6>line two"]


def test_redactor_stays_bounded_over_token_rotations():
    r = agentlog.Redactor()
    secret = "client-secret-5f0c8a1e-1b2c"
    r.add(secret, kind="client_secret")
    r.add("eyJzdGF0ZW1lbnQ.aaaa.bbbb-statement", kind="software_statement")
    tokens = ["opaque-access-token-%06d" % i for i in range(10000)]
    for t in tokens:
        r.add(t, kind="access_token")
        r.add(None, kind="access_token")  # nothing known: ignored, keeps what is held
    assert len(r) <= 8, len(r)
    text = "now %s before %s secret %s" % (tokens[-1], tokens[-2], secret)
    assert r.redact(text) == "now [REDACTED] before [REDACTED] secret [REDACTED]"
    assert tokens[0] not in r  # long gone: no longer held
    # Secrets registered without a kind are kept too, but not without bound.
    for i in range(10000):
        r.add("untyped-secret-value-%06d" % i)
    assert len(r) <= 8 + agentlog.Redactor.UNTYPED_MAX
    assert r.redact("untyped-secret-value-009999") == "[REDACTED]"
    assert r.redact(secret + tokens[-1]) == "[REDACTED][REDACTED]"


def test_redactor_masks_the_longest_secret_first():
    r = agentlog.Redactor()
    r.add("abcdef-short", kind="a")
    r.add("abcdef-short-and-longer", kind="b")
    assert r.redact("x abcdef-short-and-longer y") == "x [REDACTED] y"


def teardown_module(module):
    logging.getLogger(agentlog.LOGGER_NAME).handlers.clear()
