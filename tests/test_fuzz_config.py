"""Fuzzing the config loader: `validate` on arbitrary TOML-shaped data, `load` on arbitrary bytes.

The contract: a complete config dict, or a ConfigError whose every problem names the table/key (or
the file) and what was expected; never another exception. Bugs it found are kept as regression tests
at the end.
"""

from __future__ import annotations

import datetime
import os
import tempfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import config
from agent.errors import ConfigError

TABLES = list(config.SCHEMA)
KEYS = sorted({k for keys in config.SCHEMA.values() for k in keys})

# Values TOML can hold (and integers past float range, which tomllib also produces).
scalars = st.one_of(
    st.text(max_size=40), st.booleans(), st.integers(-(2 ** 1100), 2 ** 1100),
    st.floats(allow_nan=True, allow_infinity=True),
    st.datetimes(), st.dates(), st.times(), st.datetimes(timezones=st.just(datetime.timezone.utc)),
    st.sampled_from(["", "/", "relative/dir", "https://sp.auth.adobe.com/o", "http://127.0.0.1:8/o",
                     "http://[::1]:8/o", "http://example.com/o", "ftp://x", "flash", "debug", "\x00",
                     "https://", "https://[::1]/o", "https://h:99999/o"]),
)
values = st.recursive(scalars, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                      st.dictionaries(st.text(max_size=8), kids, max_size=3)),
                      max_leaves=8)
names = st.one_of(st.sampled_from(KEYS), st.text(max_size=12))
tables = st.dictionaries(st.one_of(st.sampled_from(TABLES), st.text(max_size=10)),
                         st.one_of(st.dictionaries(names, values, max_size=6), values), max_size=6)


def check_error(e: ConfigError, path: str | None) -> None:
    assert e.problems and all(isinstance(p, str) and p for p in e.problems)
    assert e.kind == "operator" and e.code == "config_invalid"
    if path:
        assert all(line.startswith(path + ": ") for line in str(e).split("\n"))


def check_config(cfg: config.Config) -> None:
    tables = cfg.to_dict()
    for table, keys in config.SCHEMA.items():
        assert set(tables[table]) == set(keys)


@settings(max_examples=200, deadline=None)
@given(data=tables, check_files=st.booleans())
def test_validate_any_data(data: dict, check_files: bool) -> None:
    try:
        cfg = config.validate(data, "/etc/pass-agent/agent.toml", check_files=check_files)
    except ConfigError as e:
        check_error(e, "/etc/pass-agent/agent.toml")
        for p in e.problems:  # every problem names a table (or the file): "[adobe] ..." / "unknown table [..]"
            assert "[" in p
    else:
        check_config(cfg)


# TOML-looking text: table headers, key = value lines with odd values, and plain garbage.
toml_values = st.sampled_from([
    '"x"', "''", "'''a\nb'''", '"""\n"""', "1", "-0", "0o777", "0x1F", "0b11", "1e3", "inf", "nan", "-inf",
    "true", "false", "1979-05-27T07:32:00Z", "07:32:00", "[1, 2]", "[]", '{a = 1}', "{}", '"\\u00e9"',
    '"\\ud800"', '"\\x"', "[[1]]", "1_000", "01", "+1", "[1,", "{a=", '"unterminated', "3.", "1__0",
])
toml_lines = st.one_of(
    st.tuples(st.sampled_from(TABLES + ["x", "adobe.sub", "[adobe]"]), st.booleans()).map(
        lambda t: ("[[%s]]" if t[1] else "[%s]") % t[0]),
    st.tuples(st.sampled_from(KEYS + ["a.b", '"quoted"', "bare-key", "=", ""]), toml_values).map(
        lambda t: "%s = %s" % t),
    st.text(max_size=30).map(lambda t: t.replace("\n", " ")),
)
toml_docs = st.lists(toml_lines, max_size=15).map(lambda ls: "\n".join(ls).encode("utf-8"))


@settings(max_examples=150, deadline=None)
@given(content=st.one_of(st.binary(max_size=300), toml_docs,
                         toml_docs.map(lambda b: b"\xef\xbb\xbf" + b), toml_docs.map(lambda b: b + b"\xff")))
def test_load_any_bytes(content: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "agent.toml")
        with open(path, "wb") as f:
            f.write(content)
        try:
            cfg = config.load(path, check_files=False)
        except ConfigError as e:
            check_error(e, path)
        else:
            check_config(cfg)
            assert cfg.path == path


def test_load_special_paths(tmp_path) -> None:
    # Missing, a directory, unreadable: each a ConfigError naming the file.
    for p in (str(tmp_path / "missing.toml"), str(tmp_path)):
        with pytest.raises(ConfigError) as ei:
            config.load(p)
        check_error(ei.value, p)


# -- bugs the fuzzer found, fixed: these inputs must give a ConfigError -----------------------------


def _load_text(tmp_path, text: str) -> None:
    p = tmp_path / "agent.toml"
    p.write_text(text)
    with pytest.raises(ConfigError) as ei:
        config.load(str(p), check_files=False)
    check_error(ei.value, str(p))


def test_fixed_bad_ipv6_base_url(tmp_path) -> None:
    _load_text(tmp_path, '[adobe]\nbase_url = "https://[::1/o"\n')


def test_fixed_huge_integer_number(tmp_path) -> None:
    _load_text(tmp_path, "[adobe]\ntimeout = 1%s\n" % ("0" * 400))


def test_fixed_integer_over_digit_limit(tmp_path) -> None:
    _load_text(tmp_path, "[adobe]\ntimeout = 1%s\n" % ("0" * 5000))


def test_fixed_deep_nesting(tmp_path) -> None:
    _load_text(tmp_path, "a = " + "[" * 5000)


def test_fixed_newline_in_table_name(tmp_path) -> None:
    p = tmp_path / "agent.toml"
    p.write_text('["x\\nadobe.timeout: ok"]\n')
    with pytest.raises(ConfigError) as ei:
        config.load(str(p), check_files=False)
    check_error(ei.value, str(p))


def test_fixed_infinite_timeout_refused() -> None:
    with pytest.raises(ConfigError):
        config.validate({"adobe": {"timeout": float("inf")}}, None, check_files=False)
