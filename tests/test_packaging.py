"""The project's own promises: pins agree everywhere, the README opens with the two commands, CI runs them."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def pyproject_pins() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = set(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        pins |= set(extra)
    return pins


def environment_pins() -> set[str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    return {p for p in pip if not p.startswith("-e")}


def test_every_dependency_is_pinned_exactly():
    for pin in pyproject_pins():
        assert re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][0-9A-Za-z.+-]*(; python_version < '3\.\d+')?", pin), pin


def test_environment_yml_mirrors_pyproject():
    assert environment_pins() == pyproject_pins()


def test_torch_is_pinned_first_to_the_local_cpu_wheel():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert deps[0] == "torch==2.13.0"
    assert "torch==2.13.0" in (ROOT / "Makefile").read_text()


def test_jupyter_book_is_1x():
    assert "jupyter-book==1.0.4.post1" in pyproject_pins()


def test_readme_opens_with_the_two_commands():
    head = "\n".join((ROOT / "README.md").read_text().splitlines()[:40])
    assert "make book" in head and "make test" in head


def test_the_readmes_results_are_what_the_committed_records_give():
    """The README types no number by hand: its results block is tools/make_readme.py's output over results/cpu."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "make_readme.py"), "--check"], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_the_wings_import_only_the_wings_before_them():
    """data -> models -> training (+ methods) -> experiments -> book, the CLI on top (tools/import_graph.py)."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "import_graph.py")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "book         -> " in proc.stdout and "data         -> book" not in proc.stdout
    # no module imports itself through others, lazy imports included; no folder of more than 16 modules
    summary = subprocess.run([sys.executable, str(ROOT / "tools" / "import_graph.py"), "--summary"],
                             capture_output=True, text=True, timeout=120)
    assert summary.returncode == 0 and "\ncycles 0\n" in summary.stdout + "\n", summary.stdout
    widest = int(summary.stdout.split("widest folder ")[1].split(": ")[1].split()[0])
    assert widest <= 16, summary.stdout


def test_ci_runs_make_test_and_treats_no_tests_as_failure():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci
    makefile = (ROOT / "Makefile").read_text()
    assert "-eq 5" in makefile and "-eq 5" in ci
