"""The wheel ships the book's sources and the notebooks inside the package (ntng/_data/), so `ntng book` and
`ntng sweep` work from a non-editable install (ntng/resources.py finds them). Everything else is in pyproject.toml."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
SHIPPED = ("book", "notebooks")


class BuildWithBook(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):  # an editable install reads the checkout itself
            return
        target = Path(self.build_lib) / "ntng" / "_data"
        for name in SHIPPED:
            shutil.copytree(ROOT / name, target / name, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("_build", "runs", ".*", "__pycache__"))
        shutil.copy2(ROOT / "_config.yml", target / "_config.yml")


setup(cmdclass={"build_py": BuildWithBook})
