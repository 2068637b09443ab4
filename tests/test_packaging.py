"""The twistd plugin ships in the wheel and is found after both kinds of install.

The builds run on a copy of the package's files, so they leave nothing in the
checkout and a stale dropin.cache can be planted to prove it does not ship.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PLUGIN = "twisted/plugins/reactorapp_plugin.py"
TWISTD = "from twisted.scripts.twistd import run; run()"


def pip(*args: str, cwd) -> None:
    """Run this interpreter's pip quietly; fail with its output."""
    result = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args],
        cwd=cwd, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def clean_env() -> dict[str, str]:
    """No PYTHONPATH: only what is installed in the venv may be found."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """The files a build reads, copied, with a stale dropin.cache planted."""
    src = tmp_path_factory.mktemp("src")
    for name in ("setup.cfg", "pyproject.toml", "MANIFEST.in", "README.md", "LICENSE",
                 "CHANGELOG.md"):
        shutil.copy(REPO / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "dropin.cache")
    for tree in ("reactorapp", "twisted", "docs"):
        if (REPO / tree).is_dir():
            shutil.copytree(REPO / tree, src / tree, ignore=ignore)
    (src / "twisted" / "plugins" / "dropin.cache").write_bytes(b"stale")
    return src


@pytest.fixture(scope="module")
def wheel(source, tmp_path_factory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    pip("wheel", "--no-deps", "-w", str(dist), str(source), cwd=dist)
    (built,) = dist.glob("reactorapp-*.whl")
    return built


def make_venv(path: Path) -> Path:
    """A fresh venv that can also import this environment's packages (Twisted...).

    A .pth line adds the site-packages directory, whose own .pth files are not
    read: an editable reactorapp installed here stays invisible there.
    """
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)],
                   check=True, timeout=120)
    python = path / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    (Path(site) / "outer.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def twistd(python: Path, *args: str, cwd) -> str:
    result = subprocess.run(
        [str(python), "-c", TWISTD, *args], cwd=cwd, env=clean_env(),
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def assert_plugin_found(python: Path, cwd: Path, installed_under: Path) -> None:
    listing = twistd(python, "--help", cwd=cwd)
    assert re.search(r"^\s+reactorapp\s", listing, re.M), listing
    options = twistd(python, "reactorapp", "--help", cwd=cwd)
    for flag in ("--mqtt", "--data", "--config", "--listen"):
        assert flag in options, options
    # The built-in protocols are found through the second dropin.
    assert re.search(r"^  line\s+Text lines", options, re.M), options
    where = subprocess.run(
        [str(python), "-c", "import reactorapp; print(reactorapp.__file__)"],
        cwd=cwd, env=clean_env(), check=True, capture_output=True, text=True,
    ).stdout
    assert Path(where.strip()).is_relative_to(installed_under), where


def test_dropin_imports_only_servicemaker():
    """A dropin that fails to import silently disappears from twistd."""
    tree = ast.parse((REPO / PLUGIN).read_text())
    imports = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert [(n.module, [a.name for a in n.names]) for n in imports] == [
        ("twisted.application.service", ["ServiceMaker"])
    ]
    assert not (REPO / "twisted" / "__init__.py").exists()
    assert not (REPO / "twisted" / "plugins" / "__init__.py").exists()


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    commands = re.findall(r"^\s*(python3 -m venv .*pytest.*)$", readme, re.M)
    assert len(commands) == 1, commands
    assert commands[0].strip() in ci.splitlines()


@pytest.mark.packaging
def test_wheel_ships_the_dropin_and_no_cache(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert PLUGIN in names
    assert "twisted/plugins/reactorapp_protocols.py" in names
    assert "reactorapp/tap.py" in names
    assert not [n for n in names if n.endswith("dropin.cache")]
    assert "twisted/__init__.py" not in names
    assert "twisted/plugins/__init__.py" not in names
    assert [n for n in names if ".dist-info/" in n and n.endswith("/LICENSE")], names
    assert {n.split("/")[0] for n in names} == {
        "reactorapp", "twisted", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1]
        + ".dist-info",
    }


@pytest.mark.packaging
def test_twistd_finds_plugin_after_wheel_install(wheel, tmp_path):
    python = make_venv(tmp_path / "venv")
    pip("--python", str(python), "install", "--no-deps", str(wheel), cwd=tmp_path)
    assert_plugin_found(python, cwd=tmp_path, installed_under=tmp_path / "venv")


@pytest.mark.packaging
def test_twistd_finds_plugin_after_editable_compat_install(source, tmp_path):
    python = make_venv(tmp_path / "venv")
    pip("--python", str(python), "install", "--no-deps", "-e", str(source),
        "--config-settings", "editable_mode=compat", cwd=tmp_path)
    assert_plugin_found(python, cwd=tmp_path, installed_under=source)


def test_no_built_packages_are_kept_in_the_repository():
    """Wheels and archives are built, not committed: a stray one (an
    unrelated wheel once sat at the root) only misleads."""
    stray = sorted(p.name for p in REPO.glob("*") if p.suffix in (".whl", ".egg")
                   or p.name.endswith(".tar.gz"))
    assert stray == []
