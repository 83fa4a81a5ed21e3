"""Where the book's sources and the notebooks are: beside the package in a checkout (editable install), or inside
it, as package data (`ntng/_data/`, copied in by setup.py's build step), in a wheel installed into another project.
A user's project can depend on ntng, register its own methods and build the book over its own results."""

from __future__ import annotations

from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]
PACKAGE_DATA = Path(__file__).resolve().parent / "_data"


def project_root() -> Path:
    """The folder holding `_config.yml`, `book/` and `notebooks/`: the checkout when ntng runs from one, else the
    copy shipped inside the installed package."""
    if (CHECKOUT / "_config.yml").is_file() and (CHECKOUT / "book" / "_toc.yml").is_file():
        return CHECKOUT
    if (PACKAGE_DATA / "_config.yml").is_file():
        return PACKAGE_DATA
    return CHECKOUT  # neither: ntng.book.build.check_sources names what is missing


def notebook(name: str) -> Path:
    return project_root() / "notebooks" / name


def shown_path(path: str | Path) -> str:
    """`path` as a reader of the published book can find it: relative to the checkout when it lies inside it (the
    builder's own folders mean nothing to a reader), else as it is."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(CHECKOUT)) if resolved.is_relative_to(CHECKOUT) else str(path)
