"""ntng as a library: the wheel ships the book's sources and the notebooks, and `ntng book` builds from a
non-editable install in another project's folder, over that project's results (a few runs: the pages with nothing
to show say so)."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import synthetic_results as syn

from ntng.resources import CHECKOUT


def test_the_book_builds_from_a_wheel_outside_the_checkout(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w",
                    str(dist), str(CHECKOUT)], check=True, capture_output=True)
    (wheel,) = dist.glob("ntng-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        archive.extractall(site)
    for shipped in ("ntng/_data/_config.yml", "ntng/_data/book/_toc.yml", "ntng/_data/book/family.md",
                    "ntng/_data/notebooks/pretrain.ipynb", "ntng/_data/notebooks/your_method.ipynb"):
        assert shipped in names, shipped
    project = tmp_path / "project"
    results = project / "results"
    syn.write_run(results, "bert", "baseline", "5s", 0)
    syn.write_run(results, "bert", "lion", "5s", 0)
    for seed in (0, 1):
        syn.write_run(results, "bert", syn.PLUGIN, "5s", seed)  # a method of a family the book does not know
    script = ("import ntng, ntng.book.build, pathlib; "
              f"assert pathlib.Path(ntng.__file__).is_relative_to({str(site)!r}), ntng.__file__; "
              "print(ntng.build_book(preset='smoke', results='results', run_grid=False, log=lambda m: None))")
    proc = subprocess.run([sys.executable, "-c", script], cwd=project, capture_output=True, text=True,
                          env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1",
                               "HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    index = project / "_build" / "html" / "index.html"  # built into the current directory
    assert proc.stdout.strip().endswith(str(index)) and index.is_file()
    pages = project / "_build" / "html" / "book"
    assert (pages / "family-warm_start.html").is_file()
    assert "No runs of dynamic architectures" in (pages / "family-dynamic.html").read_text()
    assert "No fine-tuning results" in (pages / "downstream.html").read_text()
    assert "No probe records yet" in (pages / "scale.html").read_text()
    assert "No tuning records yet" in (pages / "tuning.html").read_text()
