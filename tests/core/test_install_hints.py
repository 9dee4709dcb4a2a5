"""Install hints name commands that work from a checkout (the packages are not on a
public index), and the command line reports a missing backend or dependency in one
line, without a traceback."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import mithril_core as ml
from mithril_core.errors import MissingBackendError
from mithril_core.plugins import Registry, create_manager

ROOT = Path(__file__).resolve().parents[2]


def test_missing_repository_backend_names_its_plugin_folder(monkeypatch):
    monkeypatch.setenv("MITHRIL_DISABLE_PLUGINS", "torch")
    registry = Registry(create_manager())
    with pytest.raises(MissingBackendError) as info:
        registry.backend_class("torch")
    message = str(info.value)
    assert message.startswith("Backend 'torch' is not installed (installed backends: ")
    assert "distribution 'mithril-torch' in plugins/mithril_torch" in message
    assert "`python -m pip install -e ./plugins/mithril_torch`" in message
    assert "`python -m pip install -r requirements-dev.txt`" in message
    assert "pip install mithril-torch" not in message
    assert (ROOT / "plugins" / "mithril_torch" / "pyproject.toml").is_file()


def test_unknown_backend_says_where_backends_come_from():
    with pytest.raises(MissingBackendError) as info:
        ml.backend("tpu")
    message = str(info.value)
    assert "No plugin of the mithril_core checkout provides it" in message
    assert "plugins/mithril_tpu" in message
    assert "`python -m pip install -e ./plugins/mithril_<name>`" in message
    assert "pip install -e ./plugins/mithril_tpu" not in message


def run_cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "mithril_core", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


def fake_missing(tmp_path, module):
    """A folder that, first on PYTHONPATH, makes ``import module`` fail as it does
    when the package is not installed."""
    package = tmp_path / module
    package.mkdir()
    (package / "__init__.py").write_text(
        f"raise ModuleNotFoundError(\"No module named '{module}'\", name={module!r})\n"
    )
    return {"PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}


def assert_one_line_error(result, *expected):
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for text in expected:
        assert text in lines[0]


def test_cli_missing_backend_is_one_line():
    result = run_cli(
        "demo", "--backend", "torch", env={"MITHRIL_DISABLE_PLUGINS": "torch"}
    )
    assert_one_line_error(
        result,
        "Backend 'torch' is not installed",
        "`python -m pip install -e ./plugins/mithril_torch`",
    )
    assert result.stdout == ""


def test_cli_ops_with_a_missing_backend_says_how_to_install(capsys):
    from mithril_core.__main__ import main

    assert main(["ops", "--backend", "tpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Backend 'tpu' is not installed")
    assert len(err.strip().splitlines()) == 1


@pytest.mark.skipif(
    "torch" not in ml.available_backends(), reason="the torch plugin is not installed"
)
def test_cli_missing_framework_is_one_line(tmp_path):
    # The plugin is installed but PyTorch is not.
    result = run_cli(
        "demo",
        "--backend",
        "torch",
        "--epochs",
        "1",
        env=fake_missing(tmp_path, "torch"),
    )
    assert_one_line_error(
        result,
        "No module named 'torch': a package this command needs is not installed",
        "`python -m pip install torch --index-url https://download.pytorch.org/whl/cpu`",
    )


def test_cli_demo_without_its_extra_is_one_line(tmp_path):
    result = run_cli("demo", env=fake_missing(tmp_path, "sklearn"))
    assert_one_line_error(
        result, "the demo needs scikit-learn", '`python -m pip install -e ".[demo]"`'
    )


def test_cli_does_not_hide_a_missing_module_of_its_own(monkeypatch):
    from mithril_core import __main__ as cli

    def broken(argv):
        raise ModuleNotFoundError("no mithril_core.nope", name="mithril_core.nope")

    monkeypatch.setitem(cli.__dict__, "_plugins", broken)
    with pytest.raises(ModuleNotFoundError):
        cli.main(["plugins"])
