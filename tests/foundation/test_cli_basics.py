"""The root command: help tree, version, --home, and groups that are not built yet."""

from openchat_cli import __version__


def test_help_lists_every_group(cli):
    out = cli("--help").stdout
    for group in ("data", "train", "serve", "eval", "chat", "catalog", "model"):
        assert group in out


def test_version(cli):
    assert __version__ in cli("--version").stdout


def test_home_from_the_environment(cli, tmp_path, monkeypatch):
    home = tmp_path / "elsewhere"
    monkeypatch.setenv("OPENCHAT_HOME", str(home))
    out = cli("catalog", "path").stdout.strip()
    assert out == str(home / "catalog.db")
    assert (home / "catalog.db").exists()


def test_home_is_a_root_option_only(cli, tmp_path):
    """One place for --home (before the command), as for --version: sub-commands do not clone it."""
    result = cli("catalog", "path", "--home", str(tmp_path / "x"), expect=None)
    assert result.exit_code != 0 and "--home" in result.stderr


def test_one_completion_mechanism(cli):
    """Shell completion comes from the generated scripts in completions/, not Typer's installer."""
    result = cli("--install-completion", expect=None)
    assert result.exit_code != 0
    assert "--install-completion" not in cli("--help").stdout


def test_home_option_on_root(cli, tmp_path):
    home = tmp_path / "root-home"
    out = cli("--home", str(home), "catalog", "path").stdout.strip()
    assert out == str((home / "catalog.db").resolve())
