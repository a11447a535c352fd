"""Configuration precedence: flag > environment > TOML file > default."""

from pathlib import Path

from ihe.config import Option, build_parser, resolve

OPTIONS = [Option("port", "port", 8010, int), Option("host", "host", "127.0.0.1"),
           Option("verbose", "talk", False, flag=True), Option("data-dir", "dir", Path("data"), Path)]


def settings(argv, environ, tmp_path=None, toml=None):
    if toml is not None:
        path = tmp_path / "c.toml"
        path.write_text(toml)
        argv = [*argv, "--config", str(path)]
    args = build_parser("svc", "test", OPTIONS).parse_args(argv)
    return resolve("svc", OPTIONS, args, environ)


def test_defaults_apply_when_nothing_is_given():
    assert settings([], {}) == {"port": 8010, "host": "127.0.0.1", "verbose": False, "data_dir": Path("data")}


def test_flag_beats_environment_beats_file(tmp_path):
    toml = '[svc]\nport = 1\nhost = "filehost"\nverbose = true\ndata-dir = "/f"\n'
    s = settings(["--port", "3"], {"XDS_SVC_PORT": "2", "XDS_SVC_HOST": "envhost"}, tmp_path, toml)
    assert s["port"] == 3
    assert s["host"] == "envhost"
    assert s["verbose"] is True
    assert s["data_dir"] == Path("/f")
    s = settings([], {"XDS_SVC_PORT": "2"}, tmp_path, toml)
    assert s["port"] == 2
    s = settings([], {}, tmp_path, toml)
    assert s["port"] == 1


def test_environment_boolean_switch():
    assert settings([], {"XDS_SVC_VERBOSE": "yes"})["verbose"] is True
    assert settings([], {"XDS_SVC_VERBOSE": "0"})["verbose"] is False


def test_text_defaults_get_the_option_type():
    """Services write path defaults as text ("data/registry"); code joins them with `/`."""
    options = [Option("data-dir", "dir", "data/svc", Path), Option("port", "port", "8010", int)]
    resolved = resolve("svc", options, build_parser("svc", "test", options).parse_args([]), {})
    assert resolved == {"data_dir": Path("data/svc"), "port": 8010}
