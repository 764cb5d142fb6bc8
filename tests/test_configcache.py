"""The validated-configuration cache (agent/configcache.py) and stage 1's use of it (agent/startup.py).

A hit must give exactly the Config and board profile the full path gives; anything that changed
what validation saw (the file's bytes, its path, the board profile, a statement file, a group)
takes the full path with its own messages; a cache file that is damaged, foreign-owned, a
symbolic link or not a regular file is ignored (never trusted, never fatal) and said once.
"""

from __future__ import annotations

import marshal
import os

import pytest

from agent import boards, configcache, startup
from agent import config as configmod
from agent.errors import ConfigError

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "boards", "raspberrypi")


@pytest.fixture
def state(tmp_path, monkeypatch):
    d = tmp_path / "state"
    d.mkdir(mode=0o700)
    monkeypatch.setenv(configcache.ENV_DIR, str(d))
    return str(d)


def _config(tmp_path, statement_file, extra: str = "") -> str:
    p = tmp_path / "agent.toml"
    p.write_text('[adobe]\nsoftware_statement = "%s"\n[device]\nboard = "raspberrypi"\nroot = "%s"\n'
                 '[storage]\ndir = "store"\n[socket]\npath = "run/agent.sock"\nallow_uids = [1000]\n%s'
                 % (statement_file, FIXTURE, extra))
    return str(p)


def _start(path: str) -> tuple:
    """What stage 1 does with the configuration and the board, and the cache write stage 2 does."""
    bc: dict = {"cache": None, "entry": None}
    cfg, profile = startup.load_config(path, bc)
    hit = profile is not None
    profile = startup.board_profile(cfg, profile, bc)
    if bc["cache"] is not None and bc["entry"] is not None:
        assert bc["cache"].write(bc["entry"]) is None
    return cfg, profile, hit, bc


def test_a_hit_gives_exactly_what_the_full_path_gives(tmp_path, statement_file, state):
    path = _config(tmp_path, statement_file)
    cfg, profile, hit, bc = _start(path)
    assert not hit and bc["entry"] is not None  # the first start validates in full and writes the cache
    cfg2, profile2, hit2, bc2 = _start(path)
    assert hit2 and bc2["entry"] is None and bc2["cache"].problem is None
    assert cfg2 == cfg == configmod.load(path) and cfg2.path == path
    assert cfg2.storage.dir == str(tmp_path / "store")  # relative paths resolved as validation resolves them
    assert profile2 == profile == boards.load_profile("raspberrypi")
    st = os.stat(os.path.join(state, configcache.FILENAME))
    assert st.st_mode & 0o777 == 0o600 and st.st_uid == os.geteuid()


def test_multi_application_files_round_trip(tmp_path, statement_file, state):
    p = tmp_path / "agent.toml"
    p.write_text('[device]\nboard = "raspberrypi"\nroot = "%s"\n[device.overrides]\nmodel = "X1"\n'
                 '[[app]]\nname = "news"\nsoftware_statement = "%s"\nallow_uids = [7]\n'
                 '[[app]]\nname = "sport"\nsoftware_statement = "%s"\n' % (FIXTURE, statement_file, statement_file))
    _start(str(p))
    cfg, _, hit, _ = _start(str(p))
    assert hit and cfg == configmod.load(str(p)) and [a.name for a in cfg.apps] == ["news", "sport"]


def test_changed_bytes_or_another_path_take_the_full_path(tmp_path, statement_file, state):
    path = _config(tmp_path, statement_file)
    _start(path)
    with open(path, "a") as f:
        f.write("# a comment changes the bytes\n")
    assert not _start(path)[2]
    assert _start(path)[2]  # rewritten: the next start hits
    other = tmp_path / "elsewhere"
    other.mkdir()
    moved = str(other / "agent.toml")
    os.rename(path, moved)  # same bytes, another directory: its relative paths mean other directories
    cfg, _, hit, _ = _start(moved)
    assert not hit and cfg.storage.dir == str(other / "store")


def test_a_changed_board_profile_is_parsed_again_and_the_cache_rewritten(tmp_path, statement_file, state,
                                                                          monkeypatch):
    import shutil

    bdir = tmp_path / "boards"
    shutil.copytree(os.path.dirname(boards.profile_path("raspberrypi")), bdir / "raspberrypi")
    monkeypatch.setenv(boards.ENV_BOARD_DIR, str(bdir))
    path = _config(tmp_path, statement_file)
    _start(path)
    f = bdir / "raspberrypi" / "board.toml"
    f.write_text(f.read_text().replace('[storage]', '[storage]\n# changed'))
    bc: dict = {"cache": None, "entry": None}
    cfg, profile = startup.load_config(path, bc)
    assert profile is None and bc["entry"] is not None  # the configuration hit, the profile did not
    assert startup.board_profile(cfg, None, bc) == boards.load_profile("raspberrypi")
    assert bc["entry"]["board"][1] == configcache.digest(f.read_bytes())


@pytest.mark.parametrize("change", ["statement removed", "group removed"])
def test_what_validation_checks_on_the_box_is_checked_again_on_a_hit(tmp_path, statement_file, state, change,
                                                                    monkeypatch):
    path = _config(tmp_path, statement_file, '[[app]]\nname = "a"\nsoftware_statement = "%s"\nallow_groups = ["root"]\n'
                   % statement_file if change == "group removed" else "")
    if change == "group removed":  # [[app]] replaces [adobe] software_statement: write the file without it
        with open(path) as f:
            text = f.read()
        with open(path, "w") as f:
            f.write(text.replace('software_statement = "%s"\n[device]' % statement_file, "[device]", 1)
                    .replace("allow_uids = [1000]\n", ""))
    _start(path)
    assert _start(path)[2]
    if change == "statement removed":
        os.unlink(statement_file)
    else:
        import grp

        real = grp.getgrnam
        monkeypatch.setattr(grp, "getgrnam", lambda n: (_ for _ in ()).throw(KeyError(n)) if n == "root" else real(n))
    with pytest.raises(ConfigError) as hit:
        startup.load_config(path, {"cache": None, "entry": None})
    with pytest.raises(ConfigError) as full:
        configmod.load(path)
    assert str(hit.value) == str(full.value)


def _corrupt(path: str) -> None:
    with open(path, "r+b") as f:
        f.seek(-3, os.SEEK_END)
        f.write(b"\x00\x01\x02")


@pytest.mark.parametrize("damage,problem", [
    ("flipped bytes", "is damaged (wrong magic or checksum)"),
    ("truncated", "is damaged (wrong magic or checksum)"),
    ("foreign owner", "is owned by uid 4321"),
    ("group-writable", "is writable by group or others (mode 0620)"),
    ("symlink", "cannot be opened"),
    ("directory", "is not a regular file"),
    ("valid marshal, wrong shape", "is damaged (unexpected content)"),
    ("valid shape, wrong values", "is damaged (KeyError)"),
])
def test_a_bad_cache_file_is_ignored_said_and_replaced(tmp_path, statement_file, state, damage, problem):
    path = _config(tmp_path, statement_file)
    cfg = _start(path)[0]
    cpath = os.path.join(state, configcache.FILENAME)
    if damage == "flipped bytes":
        _corrupt(cpath)
    elif damage == "truncated":
        os.truncate(cpath, 20)
    elif damage == "foreign owner":
        os.chown(cpath, 4321, 4321)
    elif damage == "group-writable":
        os.chmod(cpath, 0o620)
    elif damage == "symlink":
        target = tmp_path / "elsewhere.cache"
        os.rename(cpath, target)
        os.symlink(target, cpath)
    elif damage == "directory":
        os.unlink(cpath)
        os.mkdir(cpath)
    else:
        body = ({"config": (), "plain": {}} if damage == "valid marshal, wrong shape" else
                {"config": configcache.config_key(path, open(path, "rb").read()), "plain": {"adobe": {}},
                 "board": (), "profile": {}})
        data = marshal.dumps(body)
        with open(cpath, "wb") as f:
            f.write(configcache.MAGIC + configcache.digest(data).encode() + data)
    bc: dict = {"cache": None, "entry": None}
    got, profile = startup.load_config(path, bc)
    assert got == cfg and profile is None  # the full path, the same configuration
    assert problem in bc["cache"].problem
    if damage == "directory":
        os.rmdir(cpath)
    if damage == "symlink":
        before = open(target, "rb").read()
    startup.board_profile(got, None, bc)
    assert bc["cache"].write(bc["entry"]) is None  # replaced: a file of ours, the link itself replaced
    assert not os.path.islink(cpath) and os.stat(cpath).st_uid == os.geteuid()
    if damage == "symlink":
        assert open(target, "rb").read() == before  # the link's target was never written
    assert _start(path)[2]


def test_an_unsafe_state_directory_is_neither_read_nor_written(tmp_path, statement_file, state):
    path = _config(tmp_path, statement_file)
    _start(path)
    os.chmod(state, 0o777)
    bc: dict = {"cache": None, "entry": None}
    startup.load_config(path, bc)
    assert "world-writable" in bc["cache"].problem
    startup.board_profile(configmod.load(path), None, bc)
    assert "world-writable" in bc["cache"].write(bc["entry"])


def test_without_state_directory_there_is_no_cache(tmp_path, statement_file, monkeypatch):
    monkeypatch.delenv(configcache.ENV_DIR, raising=False)
    bc: dict = {"cache": None, "entry": None}
    cfg, profile = startup.load_config(_config(tmp_path, statement_file), bc)
    assert profile is None and bc == {"cache": None, "entry": None}


def test_configurations_with_optional_parts_are_never_cached(tmp_path, statement_file, state):
    path = _config(tmp_path, statement_file, '[storage.kernel]\nkey_type = "trusted"\n[upstream]\nrate = 0.5\n')
    assert _start(path)[1] and configmod.cacheable(configmod.load(path))  # a sub-table alone is fine
    cfg = configmod.load(path).replace(storage={"key_provider": "kernel"})
    assert not configmod.cacheable(cfg)
    assert not configmod.cacheable(configmod.load(path).replace(gateway={"enabled": True}))
    assert not configmod.cacheable(configmod.load(path).replace(web={"listen": "127.0.0.1:9"}))


def test_the_daemon_says_once_why_a_cache_was_ignored_and_starts(make_agent, emu, tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    agent = make_agent(emu, log__level="info")
    agent.argv_prefix = ["env", "STATE_DIRECTORY=%s" % state]
    agent.start()
    agent.token(wait=15)
    assert agent.stop() == 0
    cpath = str(state / configcache.FILENAME)
    _corrupt(cpath)
    agent.start()
    assert agent.token()["access_token"] in agent.seen_secrets
    assert agent.stop() == 0
    log = agent.log()
    assert log.count("configuration cache %s is damaged" % cpath) == 1
    assert configcache.Cache(str(state)).read() is not None  # rewritten after READY=1
    agent.assert_no_secrets()
