"""The typed configuration (agent/config.py): the records (agent/record.py) and SCHEMA agree exactly, and a
misspelt key or an attempt to change a configuration fails at once (issue 21)."""

from __future__ import annotations

import typing

import pytest

from agent import config, record

# agent/config.py imports typing for type checkers only (issue 20: it is on the daemon's start path), so
# its annotations and its checkers' `produces` (the same annotation text) are evaluated here, with
# the typing names they use.
_NS = dict(vars(config), Optional=typing.Optional, Tuple=typing.Tuple, Mapping=typing.Mapping,
           OverrideValue=typing.Union[str, int, float, bool])


def _hints(cls: type) -> dict:
    return typing.get_type_hints(cls, globalns=_NS)


def _produces(check: object) -> object:
    return eval(check.produces, _NS)  # type: ignore[attr-defined]


def _field_default(f: record.Field) -> object:
    if f.default_factory is not record.MISSING:
        return f.default_factory()  # type: ignore[misc]
    return f.default


def test_one_dataclass_per_table_in_schema_order():
    assert list(config.SECTIONS) == list(config.SCHEMA)
    root = record.fields(config.Config)
    assert [f.name for f in root] == list(config.SCHEMA) + ["path", "app"]
    hints = _hints(config.Config)
    for table, cls in config.SECTIONS.items():
        assert hints[table] is cls, table
        assert record.is_record(cls), table  # frozen: see test_a_misspelt_key_or_a_change_in_place_fails_at_once
    assert hints["path"] == typing.Optional[str]


@pytest.mark.parametrize("table", list(config.SCHEMA))
def test_fields_agree_with_schema_names_types_and_defaults(table):
    cls = config.SECTIONS[table]
    fields = record.fields(cls)
    assert [f.name for f in fields] == list(config.SCHEMA[table]), table
    hints = _hints(cls)
    for f in fields:
        check, default = config.SCHEMA[table][f.name]
        assert hints[f.name] == _produces(check), "[%s] %s: field type %r, checker produces %r" % (
            table, f.name, hints[f.name], check.produces)
        got = _field_default(f)
        assert got == default and type(got) is type(config._freeze(default)), (table, f.name, got, default)
        ok, norm, _ = check(default) if default is not None else (True, None, "")
        assert ok and norm == got, (table, f.name)  # the default passes its own checker unchanged


def test_app_fields_agree_with_app_schema():
    """[[app]] (issue 16): AppConfig and APP_SCHEMA agree on names, order, types and defaults."""
    fields = record.fields(config.AppConfig)
    assert [f.name for f in fields] == list(config.APP_SCHEMA)
    hints = _hints(config.AppConfig)
    assert _hints(config.Config)["app"] == typing.Tuple[config.AppConfig, ...]
    for f in fields:
        check, default = config.APP_SCHEMA[f.name]
        assert hints[f.name] == _produces(check), f.name
        got = _field_default(f)
        assert got == default and type(got) is type(config._freeze(default)), (f.name, got, default)
        ok, norm, _ = check(default) if default is not None else (True, None, "")
        assert ok and norm == got, f.name


def test_defaults_are_the_dataclass_defaults():
    assert config.defaults() == config.Config()


def _runtime_type(t: object) -> tuple:
    origin = typing.get_origin(t)
    if origin is typing.Union:
        return tuple(x for a in typing.get_args(t) for x in _runtime_type(a))
    if origin is not None:
        return (origin,)
    return (t,)


def test_a_validated_file_has_values_of_the_declared_types(tmp_path, statement_file):
    import collections.abc

    p = tmp_path / "agent.toml"
    p.write_text('[adobe]\nsoftware_statement = "%s"\ntimeout = 7\nredirect_uri = "https://x.example/cb"\n'
                 '[socket]\nallow_uids = [1000, 1001]\n[device.overrides]\nmodel = "X1"\ndisplayWidth = 1920\n'
                 % statement_file)
    cfg = config.load(str(p))
    assert cfg.path == str(p)
    for table, cls in config.SECTIONS.items():
        section = getattr(cfg, table)
        assert type(section) is cls
        for name, t in _hints(cls).items():
            allowed = tuple(collections.abc.Mapping if x is collections.abc.Mapping else x for x in _runtime_type(t))
            assert isinstance(getattr(section, name), allowed), (table, name, getattr(section, name))
    assert cfg.adobe.timeout == 7.0 and type(cfg.adobe.timeout) is float
    assert cfg.socket.allow_uids == (1000, 1001)
    assert dict(cfg.device.overrides) == {"model": "X1", "displayWidth": 1920}


def test_a_misspelt_key_or_a_change_in_place_fails_at_once():
    cfg = config.defaults()
    with pytest.raises(AttributeError):
        cfg.adobe.sofware_statement  # noqa: B018 - the typo is the test
    with pytest.raises(record.FrozenInstanceError):
        cfg.adobe.timeout = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.device.overrides["model"] = "X"  # type: ignore[index]
    with pytest.raises(TypeError):
        cfg.replace(adobe={"sofware_statement": "/x"})
    with pytest.raises(TypeError, match="unknown configuration table"):
        cfg.replace(adobbe={"timeout": 1.0})


def test_replace_returns_a_changed_copy_and_view_keeps_its_shape():
    cfg = config.defaults()
    new = cfg.replace(socket={"allow_uids": [5]}, console={"password_hash": "scrypt$x"}, path="/etc/x.toml")
    assert cfg.socket.allow_uids == () and new.socket.allow_uids == (5,) and new.path == "/etc/x.toml"
    v = config.view(new)
    assert v["socket"]["allow_uids"] == [5] and v["console"]["password_hash"] == "<set, hidden>"
    assert v["device"]["overrides"] == {} and type(v["device"]["overrides"]) is dict
    assert list(v) == list(config.SCHEMA) and all(list(v[t]) == list(config.SCHEMA[t]) for t in v)
