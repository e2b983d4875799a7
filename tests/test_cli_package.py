"""slimkit.cli is a package of thin command modules: `python -m slimkit.cli` runs it, building the parser
imports no torch, and the names other code imported from the old slimkit.train._cli still work (with a
DeprecationWarning) from the library modules they moved to."""
import subprocess
import sys

import pytest

from slimkit import cli


def test_every_command_is_a_module_of_the_cli_package():
    assert set(cli.COMMANDS) == {"demo", "profile", "train", "compress", "search"}
    assert all(module == f"slimkit.cli.{name}" for name, module in cli.COMMANDS.items())


def test_python_dash_m_slimkit_cli_runs_the_command_line():
    out = subprocess.run([sys.executable, "-m", "slimkit.cli", "--version"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("slimkit ")
    bad = subprocess.run([sys.executable, "-m", "slimkit.cli", "train", "--epochs", "x"], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "invalid int value: 'x'" in bad.stderr  # argparse's usage error


def test_building_the_parser_imports_no_torch():
    code = "import sys; from slimkit.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_old_train_cli_names_warn_and_point_to_the_library():
    from slimkit.train import _cli as old
    from slimkit.train.build import build_model
    from slimkit.train.config import parse_options

    with pytest.warns(DeprecationWarning, match="slimkit.train.config.parse_options"):
        assert old.parse_options is parse_options
    with pytest.warns(DeprecationWarning, match="slimkit.train.build.build_model"):
        assert old.build_model is build_model
    with pytest.raises(AttributeError, match="slimkit.cli.train"):
        old.resolve_settings  # noqa: B018 - the command's own helpers are not forwarded
