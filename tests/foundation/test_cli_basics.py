"""The root command: help tree, version, --home, and groups that are not built yet."""

from openchat_cli import __version__


def test_help_lists_every_group(cli):
    out = cli("--help").stdout
    for group in ("data", "train", "serve", "eval", "chat", "catalog", "model"):
        assert group in out


def test_version(cli):
    assert __version__ in cli("--version").stdout


def test_home_option_after_subcommand(cli, tmp_path):
    home = tmp_path / "elsewhere"
    out = cli("catalog", "path", "--home", str(home)).stdout.strip()
    assert out == str((home / "catalog.db").resolve())
    assert (home / "catalog.db").exists()


def test_home_option_on_root(cli, tmp_path):
    home = tmp_path / "root-home"
    out = cli("--home", str(home), "catalog", "path").stdout.strip()
    assert out == str((home / "catalog.db").resolve())
