"""Several registered applications in one configuration (issue 16): [[app]] tables, the
single-application form as the application "default", and a clear error for every mistake."""

from __future__ import annotations

import grp

import pytest

from agent import config
from agent.errors import ConfigError


def _problems(path):
    with pytest.raises(ConfigError) as ei:
        config.load(path)
    return ei.value.problems


def _two(tmp_path, extra_a: str = "", extra_b: str = "") -> str:
    for n in ("a", "b"):
        (tmp_path / ("%s.jwt" % n)).write_text("x.y.z")
    return ('[[app]]\nname = "news"\nsoftware_statement = "a.jwt"\napplication_id = "com.example.news"\n'
            'allow_uids = [1001]\n%s\n[[app]]\nname = "sport"\nsoftware_statement = "b.jwt"\n'
            'redirect_uri = "https://sport.example/cb"\nallow_gids = [2002]\n%s\n' % (extra_a, extra_b))


def test_single_application_file_is_the_application_default(write_config, statement_file):
    cfg = config.load(write_config('[adobe]\nsoftware_statement = "%s"\nredirect_uri = "https://x.example/cb"\n'
                                   '[device]\napplication_id = "com.example.tv"\n[socket]\nallow_uids = [1000]\n'
                                   'allow_gids = [2000]\n' % statement_file))
    assert cfg.app == ()
    (app,) = cfg.apps
    assert app == config.AppConfig(name="default", software_statement=statement_file,
                                   redirect_uri="https://x.example/cb", application_id="com.example.tv",
                                   allow_uids=(1000,), allow_gids=(2000,))
    # derived, so a copy changed in code follows
    assert cfg.replace(adobe={"software_statement": "/x.jwt"}).apps[0].software_statement == "/x.jwt"
    assert config.app_acls(cfg) == {"default": (frozenset({1000}), frozenset({2000}))}


def test_app_tables_load_in_order_with_relative_paths(write_config, tmp_path):
    cfg = config.load(write_config(_two(tmp_path)))
    assert [a.name for a in cfg.apps] == ["news", "sport"]
    news, sport = cfg.apps
    assert news.software_statement == str(tmp_path / "a.jwt")
    assert news.application_id == "com.example.news" and news.allow_uids == (1001,)
    assert sport.redirect_uri == "https://sport.example/cb" and sport.allow_gids == (2002,)
    assert cfg.app_named("sport") is sport and cfg.app_named("nope") is None
    assert config.app_acls(cfg) == {"news": (frozenset({1001}), frozenset()),
                                    "sport": (frozenset(), frozenset({2002}))}


def test_to_toml_round_trips_app_tables(write_config, tmp_path):
    cfg = config.load(write_config(_two(tmp_path)))
    again = config.load(write_config(config.to_toml(cfg), name="again.toml"))
    assert again.apps == cfg.apps
    assert "software_statement" not in config.view(cfg)["adobe"]  # the [[app]] tables own it
    assert [a["name"] for a in config.view(cfg)["app"]] == ["news", "sport"]


def test_replace_builds_app_tables(tmp_path):
    cfg = config.defaults().replace(app=[{"name": "a", "software_statement": "/a", "allow_uids": [5]},
                                         config.AppConfig(name="b", software_statement="/b")])
    assert [a.name for a in cfg.apps] == ["a", "b"] and cfg.apps[0].allow_uids == (5,)
    assert cfg.replace(app=[]).apps[0].name == "default"


def test_duplicate_names(write_config, tmp_path):
    text = _two(tmp_path).replace('name = "sport"', 'name = "news"')
    (p,) = [p for p in _problems(write_config(text)) if "twice" in p]
    assert "[[app]] 'news'" in p and "#1 and #2" in p


@pytest.mark.parametrize("name", ["", "News", "a b", "../x", "-x", "x" * 33, "a.b", 7])
def test_bad_names(write_config, tmp_path, name):
    text = _two(tmp_path).replace('name = "news"', "name = %s" % (repr(name).replace("'", '"')))
    (p,) = _problems(write_config(text))
    assert "[[app]] #1 name: found" in p and "lower-case letters" in p


def test_missing_required_keys_and_unknown_keys(write_config, tmp_path):
    problems = _problems(write_config('[[app]]\nname = "a"\nstatement = "x"\n'))
    assert any("[[app]] 'a': missing software_statement" in p for p in problems)
    assert any("[[app]] 'a' unknown key 'statement'" in p and "known keys: name, software_statement" in p
               for p in problems)
    assert any("#1: missing name" in p for p in _problems(write_config('[[app]]\nsoftware_statement = "x"\n')))


@pytest.mark.parametrize("legacy", ['[adobe]\nsoftware_statement = "s.jwt"\n', '[adobe]\nredirect_uri = "x"\n',
                                    '[device]\napplication_id = "x"\n', '[socket]\nallow_uids = [1]\n',
                                    '[socket]\nallow_groups = ["root"]\n', '[device.overrides]\napplicationId = "x"\n'])
def test_app_tables_mixed_with_the_single_application_keys(write_config, tmp_path, legacy):
    problems = _problems(write_config(legacy + _two(tmp_path)))
    assert len(problems) == 1, problems
    assert "next to [[app]] tables" in problems[0]


def test_app_as_a_table_or_empty(write_config, tmp_path):
    (p,) = _problems(write_config('[app.news]\nsoftware_statement = "x"\n'))
    assert "array of tables" in p and "[[app]]" in p
    (p,) = _problems(write_config('app = []\n'))
    assert "one or more [[app]] tables" in p


def test_app_statement_file_and_groups_are_checked(write_config, tmp_path):
    text = _two(tmp_path, extra_b='allow_groups = ["no-such-group-pa"]').replace('"b.jwt"', '"missing.jwt"')
    problems = _problems(write_config(text))
    assert any("[[app]] 'sport' software_statement: file" in p and "missing.jwt" in p for p in problems)
    assert any("[[app]] 'sport' allow_groups: no group named 'no-such-group-pa'" in p for p in problems)
    # check_files=False (reset, status as another user) skips the statement file only
    cfg = config.load(write_config(_two(tmp_path).replace('"b.jwt"', '"missing.jwt"')), check_files=False)
    assert cfg.apps[1].software_statement.endswith("missing.jwt")


def test_app_groups_resolve(write_config, tmp_path):
    g = grp.getgrgid(0).gr_name
    cfg = config.load(write_config(_two(tmp_path, extra_a='allow_groups = ["%s"]' % g)))
    assert config.app_acls(cfg)["news"] == (frozenset({1001}), frozenset({0}))


def test_too_many_apps(write_config, tmp_path):
    (tmp_path / "s.jwt").write_text("x.y.z")
    text = "".join('[[app]]\nname = "a%d"\nsoftware_statement = "s.jwt"\n' % i for i in range(config.MAX_APPS + 1))
    (p,) = _problems(write_config(text))
    assert "at most %d" % config.MAX_APPS in p
