"""Configuration loading and validation: every error class names file, key, found and expected."""

from __future__ import annotations

import os

import pytest

from agent import config
from agent.errors import ConfigError


def _problems(path):
    with pytest.raises(ConfigError) as ei:
        config.load(path)
    return ei.value.problems


def test_defaults_are_documented_values(write_config, statement_file):
    cfg = config.load(write_config('[adobe]\nsoftware_statement = "%s"\n' % statement_file))
    assert cfg.adobe.base_url == "https://sp.auth.adobe.com/o"
    assert cfg.refresh.at == 0.8 and cfg.refresh.jitter == 0.1
    assert cfg.socket.mode == 0o660
    assert cfg.storage.token_cache == "flash"
    assert cfg.device.root == "/"
    assert cfg.console.port == ""


def test_unknown_key_and_table(write_config, statement_file):
    path = write_config('[adobe]\nsoftware_statement = "%s"\nbase_ulr = "x"\n[sockets]\npath = "/x"\n' % statement_file)
    probs = _problems(path)
    assert any("[adobe] unknown key 'base_ulr'" in p and "base_url" in p for p in probs)
    assert any("unknown table ['sockets']" in p for p in probs)


def test_wrong_types_are_all_reported(write_config, statement_file):
    path = write_config('[adobe]\nsoftware_statement = "%s"\ntimeout = "ten"\n[socket]\nmode = "0660"\n'
                        'allow_uids = [1000, "x"]\n[refresh]\nat = 1.5\n[storage]\ntoken_cache = "disk"\n'
                        % statement_file)
    probs = _problems(path)
    text = "\n".join(probs)
    assert "[adobe] timeout: found 'ten' (str), expected a positive, finite number" in text
    assert "[socket] mode: found '0660' (str), expected a file mode as an integer" in text
    assert "[socket] allow_uids" in text
    assert "[refresh] at: found 1.5 (float), expected a number from 0.1 to 0.95" in text
    assert '[storage] token_cache' in text and '"flash", "runtime", "memory"' in text
    assert len(probs) == 5


def test_missing_statement_file(write_config, tmp_path):
    path = write_config('[adobe]\nsoftware_statement = "missing.jwt"\n')
    probs = _problems(path)
    assert probs == ["[adobe] software_statement: file %s does not exist or is not a regular file"
                     % os.path.join(str(tmp_path), "missing.jwt")]


def test_error_message_names_the_file(write_config):
    path = write_config('[adobe]\ntimeout = -1\nsoftware_statement = "/nonexistent"\n')
    with pytest.raises(ConfigError) as ei:
        config.load(path)
    assert all(line.startswith(path + ": ") for line in str(ei.value).splitlines())


def test_http_only_on_loopback(write_config, statement_file):
    for url, ok in (("http://127.0.0.1:8080/o", True), ("http://localhost/o", True), ("http://[::1]:1/o", True),
                    ("http://sp.auth.adobe.com/o", False), ("http://10.0.0.1/o", False),
                    ("ftp://x/o", False), ("https://sp-prequal.auth.adobe.com/o", True)):
        path = write_config('[adobe]\nsoftware_statement = "%s"\nbase_url = "%s"\n' % (statement_file, url))
        if ok:
            assert config.load(path).adobe.base_url == url
        else:
            assert any("base_url" in p for p in _problems(path)), url


def test_not_toml_and_missing_file(write_config, tmp_path):
    assert "not valid TOML" in _problems(write_config("[adobe\n"))[0]
    assert "file not found" in _problems(str(tmp_path / "nope.toml"))[0]


def test_env_override(write_config, statement_file, monkeypatch):
    path = write_config('[adobe]\nsoftware_statement = "%s"\n[log]\nlevel = "debug"\n' % statement_file)
    monkeypatch.setenv("PASS_AGENT_CONFIG", path)
    assert config.load(None).log.level == "debug"
    assert config.resolve_path("/explicit.toml") == "/explicit.toml"


def test_relative_paths_resolve_against_the_config_dir(write_config, tmp_path, statement_file):
    path = write_config('[adobe]\nsoftware_statement = "statement.jwt"\n[storage]\ndir = "store"\n')
    cfg = config.load(path)
    assert cfg.adobe.software_statement == statement_file
    assert cfg.storage.dir == str(tmp_path / "store")


def test_to_toml_round_trip(tmp_path, statement_file):
    cfg = config.defaults().replace(adobe={"software_statement": statement_file},
                                    device={"overrides": {"model": "X1", "displayWidth": 1920}},
                                    socket={"allow_gids": [5, 6]})
    p = tmp_path / "rt.toml"
    p.write_text(config.to_toml(cfg))
    back = config.load(str(p))
    for table in config.SCHEMA:
        assert getattr(back, table) == getattr(cfg, table), table


def test_view_masks_the_console_password_hash(statement_file):
    cfg = config.defaults().replace(console={"password_hash": "scrypt$16384$8$1$c2FsdA$aGFzaA"})
    v = config.view(cfg)
    assert v["console"]["password_hash"] == "<set, hidden>"
    assert "_path" not in v


def test_allow_groups_resolve_and_unknown_group_is_reported(write_config, statement_file):
    import grp

    existing = grp.getgrgid(0).gr_name
    cfg = config.load(write_config('[adobe]\nsoftware_statement = "%s"\n[socket]\nallow_groups = ["%s"]\n'
                                   'allow_gids = [4242]\n' % (statement_file, existing)))
    assert config.allowed_gids(cfg) == [0, 4242]
    probs = _problems(write_config('[adobe]\nsoftware_statement = "%s"\n[socket]\nallow_groups = '
                                   '["no-such-group-xyz"]\n' % statement_file))
    assert probs == ["[socket] allow_groups: no group named 'no-such-group-xyz' on this system; create it "
                     "(sysusers.d) or use allow_gids"]


@pytest.mark.parametrize("value", ["not-a-hash", "scrypt$16384$8$1$c2FsdA$aGFzaA", "pbkdf2_sha256$10$c2FsdHNhbHQ=$"
                                   "aGFzaGhhc2hoYXNoaGFzaA==", "scrypt$3$8$1$c2FsdHNhbHQ=$aGFzaGhhc2hoYXNoaGFzaA=="])
def test_bad_console_password_hash_is_a_config_error(write_config, statement_file, value):
    """`check` and `run` must agree: a hash the console would reject fails validation, before the agent
    touches the store, the socket or the network."""
    probs = _problems(write_config('[adobe]\nsoftware_statement = "%s"\n[console]\npassword_hash = "%s"\n'
                                   % (statement_file, value)))
    assert len(probs) == 1 and probs[0].startswith("[console] password_hash: ")
    assert "pass-agent console-hash" in probs[0]
    assert value not in probs[0]  # a hash is a secret too: never echoed


def test_good_console_password_hash_passes(write_config, statement_file):
    from agent.consolehash import hash_password

    h = hash_password("pw", "pbkdf2_sha256")
    cfg = config.load(write_config('[adobe]\nsoftware_statement = "%s"\n[console]\npassword_hash = "%s"\n'
                                   % (statement_file, h)))
    assert cfg.console.password_hash == h


def test_console_port_without_pyserial_is_a_config_error(write_config, statement_file, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "serial" else real(name, *a))
    probs = _problems(write_config('[adobe]\nsoftware_statement = "%s"\n[console]\nport = "/dev/ttyS0"\n'
                                   % statement_file))
    assert probs == ["[console] port: set to '/dev/ttyS0', but pyserial is not installed for this Python; "
                     "install pyserial, or set port = \"\" to run without the console"]
