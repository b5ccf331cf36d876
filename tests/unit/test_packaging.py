"""setup.cfg: a build of radtriage holds every data file its packages read (the dashboard's
templates and stylesheet, Alembic's files) and setuptools has nothing to warn about (issue 18,
item 11: ``make run`` printed about 100 lines of "Package 'web.static' is absent from the
`packages` configuration").

The check runs setuptools' own ``build_py`` (what ``pip install .`` and ``pip install -e .``
run to lay out the packages) on a copy of the packaging files and of the packages that carry
data, with the setuptools of this environment: a build in a fresh virtual environment would
take minutes.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: the packages with data files (the others are Python only)
DATA_PACKAGES = ("db", "web")


def data_files(root: Path) -> set[str]:
    """Every file under the data packages that is not Python source or bytecode."""
    return {str(p.relative_to(root)) for pkg in DATA_PACKAGES for p in (root / pkg).rglob("*")
            if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts}


def test_a_build_has_every_data_file_and_no_setuptools_warning(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for pkg in DATA_PACKAGES:
        shutil.copytree(REPO / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    build = tmp_path / "build"
    proc = subprocess.run([sys.executable, "-c", "import setuptools; setuptools.setup()",
                           "build_py", "--build-lib", str(build)],
                          cwd=src, capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "absent from the `packages` configuration" not in output, output
    assert "Warning" not in output and "!!" not in output, output
    missing = data_files(src) - data_files(build)
    assert not missing, f"not in the build: {sorted(missing)}"
    assert {"web/templates/base.html", "web/static/style.css", "db/alembic.ini"} <= data_files(build)
