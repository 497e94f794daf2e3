"""The built wheel works as well as the editable install: build it, install it into a fresh
venv (its dependencies borrowed from this one, no download), index and query from outside the
repository."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from conftest import Catalogue
from helpers import REPO, jpeg, photo, write

pytestmark = pytest.mark.slow


def _run(args: list[str | Path], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{args}: {proc.stdout}\n{proc.stderr}"
    return proc


def test_wheel_installs_and_runs(tmp_path: Path, catalogue: Catalogue) -> None:
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
          "-w", dist, REPO], cwd=tmp_path)
    wheels = list(dist.glob("echoimage-*.whl"))
    assert len(wheels) == 1
    import zipfile

    names = zipfile.ZipFile(wheels[0]).namelist()
    assert any(n.startswith("echoimage/store/migrations/versions/") for n in names)
    # the benchmark is a package of its own (bench/), not part of the wheel
    assert not [n for n in names if "bench" in n.split("/")[0]], names
    assert not [n for n in names if n.startswith("echoimage/bench")], names

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv], cwd=tmp_path)
    py = venv / "bin" / "python"
    site = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=tmp_path).stdout.strip())
    # the dependencies come from this environment (a path entry: its .pth files, among
    # them the editable install of the repository, are not read)
    (site / "borrowed-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheels[0]], cwd=tmp_path)

    where = _run([py, "-c", "import echoimage; print(echoimage.__file__)"], cwd=tmp_path)
    assert where.stdout.strip().startswith(str(venv)), where.stdout

    exe = venv / "bin" / "echoimage"
    data = tmp_path / "data"
    built = _run([exe, "--data-dir", data, "index", "build", "-q", "--json", catalogue.root],
                 cwd=tmp_path)
    assert json.loads(built.stdout)["counts"]["indexed"] == len(catalogue.files)
    query = write(tmp_path / "q.jpg", jpeg(photo("coffee")[20:-20, 30:-30], quality=70))
    found = _run([exe, "--data-dir", data, "query", "--json", query], cwd=tmp_path)
    top = json.loads(found.stdout)["results"][0]
    assert top["url"] == catalogue.url("coffee") and top["duplicate"]

    # `echoimage bench` needs the benchmark package, which the wheel does not carry
    proc = subprocess.run([str(exe), "bench", str(tmp_path)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip() == ("Error: the benchmark is not installed: it is the separate "
                                   "package in a checkout's bench/ (`make venv` installs it, "
                                   "or pip install -e ./bench)"), proc.stderr
