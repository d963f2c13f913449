from pathlib import Path

import pytest

from daemon.config import Settings, load_settings
from daemon.errors import ConfigError


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults(tmp_path: Path) -> None:
    settings = load_settings(config_file=tmp_path / "missing.yaml", env={})
    assert settings == Settings()
    assert (settings.port, settings.bind, settings.cors) == (1234, "127.0.0.1", [])


def test_precedence_file_then_env_then_flags(tmp_path: Path) -> None:
    config = write(tmp_path / "c.yaml", "port: 2000\nbind: 0.0.0.0\nlog_level: debug\n")
    state = write(tmp_path / "s.json", '{"port": 1500}')
    only_state = load_settings(config_file=tmp_path / "none.yaml", server_state_file=state, env={})
    assert only_state.port == 1500
    from_file = load_settings(config_file=config, server_state_file=state, env={})
    assert (from_file.port, from_file.bind, from_file.log_level) == (2000, "0.0.0.0", "debug")
    from_env = load_settings(
        config_file=config, env={"LMS_PORT": "3000", "LMS_CORS": "http://a.b, http://c.d"}
    )
    assert (from_env.port, from_env.cors, from_env.bind) == (
        3000,
        ["http://a.b", "http://c.d"],
        "0.0.0.0",
    )
    from_flags = load_settings(
        config_file=config, env={"LMS_PORT": "3000"}, flags={"port": 4000, "bind": None}
    )
    assert (from_flags.port, from_flags.bind) == (4000, "0.0.0.0")


def test_lm_studio_bind_variable_is_accepted(tmp_path: Path) -> None:
    settings = load_settings(config_file=tmp_path / "x", env={"LMS_SERVER_HOST": "::1"})
    assert settings.bind == "::1"


def test_list_from_env_uses_path_separator(tmp_path: Path) -> None:
    settings = load_settings(config_file=tmp_path / "x", env={"LMS_MODELS_DIRS": "/a:/b"})
    assert settings.models_dirs == ["/a", "/b"]


def test_unknown_key_names_key_and_file(tmp_path: Path) -> None:
    config = write(tmp_path / "c.yaml", "prot: 1\n")
    with pytest.raises(ConfigError) as info:
        load_settings(config_file=config, env={})
    assert str(config) in str(info.value)
    assert "'prot'" in str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("port: '1234'\n", "'port' must be an integer"),
        ("port: true\n", "'port' must be an integer"),
        ("cors: 1\n", "'cors' must be a list of strings"),
        ("metrics: 1\n", "'metrics' must be true or false"),
        ("models_dirs: /one\n", "'models_dirs' must be a list of strings"),
        ("bind: 127\n", "'bind' must be a string"),
    ],
)
def test_wrong_type_names_key_and_file(tmp_path: Path, text: str, expected: str) -> None:
    config = write(tmp_path / "c.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_settings(config_file=config, env={})
    assert expected in str(info.value)
    assert str(config) in str(info.value)


def test_bad_env_value_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"LMS_PORT.*'port' must be an integer"):
        load_settings(config_file=tmp_path / "x", env={"LMS_PORT": "http"})


def test_out_of_range_names_its_source(tmp_path: Path) -> None:
    config = write(tmp_path / "c.yaml", "port: 70000\n")
    with pytest.raises(ConfigError, match=f"{config}.*'port' must be between"):
        load_settings(config_file=config, env={})
    with pytest.raises(ConfigError, match=r"--log-level.*'log_level' must be one of"):
        load_settings(config_file=tmp_path / "x", env={}, flags={"log_level": "loud"})


def test_not_a_mapping_and_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_settings(config_file=write(tmp_path / "a.yaml", "- 1\n"), env={})
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(config_file=write(tmp_path / "b.yaml", "port: [\n"), env={})


def test_empty_file_and_corrupt_remembered_port_are_ignored(tmp_path: Path) -> None:
    state = write(tmp_path / "s.json", "{not json")
    settings = load_settings(
        config_file=write(tmp_path / "c.yaml", ""), server_state_file=state, env={}
    )
    assert settings.port == 1234


def test_preload_entries_are_checked(tmp_path: Path) -> None:
    good = write(tmp_path / "g.yaml", "preload:\n  - model: a\n    context_length: 512\n")
    assert load_settings(config_file=good, env={}).preload == [
        {"model": "a", "context_length": 512}
    ]
    typo = write(tmp_path / "t.yaml", "preload:\n  - model: a\n    contxt: 512\n")
    with pytest.raises(ConfigError, match=r"unknown key 'preload\[0\]\.contxt'"):
        load_settings(config_file=typo, env={})
    missing = write(tmp_path / "m.yaml", "preload:\n  - identifier: a\n")
    with pytest.raises(ConfigError, match="'model' key"):
        load_settings(config_file=missing, env={})


def test_save_setting_keeps_the_other_keys(tmp_path: Path) -> None:
    from daemon.config import save_setting

    config = write(tmp_path / "c.yaml", "port: 2000\n")
    save_setting(config, "jit_ttl", 60.0)
    settings = load_settings(config_file=config, env={})
    assert (settings.port, settings.jit_ttl) == (2000, 60.0)


def test_every_setting_is_documented() -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "config.md").read_text()
    from daemon.config import SETTING_NAMES, env_var

    for name in SETTING_NAMES:
        assert f"| `{name}` |" in docs, f"docs/config.md does not describe {name}"
        assert env_var(name) in docs
