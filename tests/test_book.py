"""The book, built from a synthetic results folder (no training) and opened in headless Chromium: every image loads,
no page shows an error or a traceback, the navigation reaches every chapter, and the introduction's result table
holds the numbers of the run directories."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest
import synthetic_results as syn
import yaml
from headless_chromium import Browser, find_chromium

from ntng.book.build import build_book
from ntng.presets import PRESETS_FILE_ENV

# every <img> settled (loaded or failed), then naturalWidth per image
IMAGES_JS = """(async () => {
  const imgs = [...document.images];
  await Promise.all(imgs.map(i => i.complete ? null : new Promise(r => { i.onload = r; i.onerror = r; })));
  return imgs.map(i => ({src: i.getAttribute("src"), width: i.naturalWidth}));
})()"""
# visible text of the page's main part, without the places meant to show recorded failures (div.ntng-record)
TEXT_JS = """(() => {
  const records = [...document.querySelectorAll("main .ntng-record")];
  records.forEach(e => { e.style.display = "none"; });
  const text = document.querySelector("main").innerText;
  records.forEach(e => { e.style.display = ""; });
  return text;
})()"""
ERROR_OUTPUTS_JS = """document.querySelectorAll(
  ".output.error, .output.traceback, .output.stderr, .system-message, .problematic").length"""
NAV_JS = """[...document.querySelectorAll("nav.bd-docs-nav a.reference")].map(a => a.href)"""
TABLE_JS = """[...document.querySelectorAll("main table")].map(t => [...t.rows].map(r => [...r.cells].map(c =>
  c.innerText.trim())))"""
# the result tables, a table per model under the model's name: [name, rows] each
RESULT_TABLES_JS = """[...document.querySelectorAll("main table")].map(t => {
  const block = t.closest(".pst-scrollable-table-container") || t, above = block.previousElementSibling;
  return [above ? above.innerText.trim() : "", [...t.rows].map(r => [...r.cells].map(c => c.innerText.trim()))]; })"""
# per table shown at this width: [its first header, its content's width, its box's width] (wider content scrolls)
TABLE_WIDTHS_JS = """[...document.querySelectorAll("main table")].map(t =>
  [t.rows.length ? t.rows[0].cells[0].innerText.trim() : "", t.scrollWidth, t.clientWidth])"""
APPENDIX_LINKS_JS = """[...document.querySelectorAll("main a[href*='/runs/']")].map(a => a.href)"""
# per figure: its shown width against the text column's (ntng.css stretches every figure output to the column)
FIGURE_WIDTH_JS = """[...document.querySelectorAll("main .cell_output img")].map(i => [i.getBoundingClientRect().width,
  i.closest("section, article").getBoundingClientRect().width])"""
# table cells holding a number (with or without its interval) that the browser broke over two lines or more
WRAPPED_NUMBERS_JS = r"""[...document.querySelectorAll("main table td")].filter(td => {
  const text = td.innerText.trim();
  if (!/^[-+\u2212]?\d[\d.]*(e-?\d+)?(\s\[[^\]]*\])?$/.test(text)) return false;
  const walker = document.createTreeWalker(td, NodeFilter.SHOW_TEXT);
  const tops = [];
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const range = document.createRange(); range.selectNodeContents(node);
    for (const r of range.getClientRects()) if (r.width > 0 && r.height > 0) tops.push(r.top);
  }
  return tops.length > 0 && Math.max(...tops) - Math.min(...tops) > 2;
}).map(td => td.innerText.trim())"""
RECORD_JS = """[...document.querySelectorAll("main .ntng-record")].map(e => e.innerText).join("\\n")"""


@pytest.fixture(scope="module")
def book(tmp_path_factory):
    chromium = find_chromium()
    if chromium is None:
        pytest.fail("headless Chromium is needed for the book test and is not installed: `apt-get install -y "
                    "chromium` (make test installs it where apt-get is available)")
    root = tmp_path_factory.mktemp("book")
    results = root / "results"
    written = syn.write_results(results)
    # the controls page's batch-size control: a preset of the user's own (the pages' kernels inherit the variable)
    presets_file, before = syn.write_batch_control(results), os.environ.get(PRESETS_FILE_ENV)
    os.environ[PRESETS_FILE_ENV] = str(presets_file)
    try:
        started = time.perf_counter()
        index = build_book(preset=syn.PRESET, results=results, run_grid=False, out_dir=root / "out", log=print)
        print(f"book built in {time.perf_counter() - started:.0f} s")
    finally:
        if before is None:
            os.environ.pop(PRESETS_FILE_ENV)
        else:
            os.environ[PRESETS_FILE_ENV] = before
    with Browser(chromium) as browser:
        yield {"index": index, "results": results, "written": written, "browser": browser}


def _chapters(index: Path) -> list[str]:
    """The built book's chapters, from the table of contents `ntng book` staged (one chapter per family)."""
    toc = yaml.safe_load((index.parent.parent / "source" / "book" / "_toc.yml").read_text())
    return [toc["root"]] + [c["file"] for part in toc["parts"] for c in part["chapters"]]


def _visit(browser, url: str) -> dict:
    browser.open(url)
    return {"images": browser.evaluate(IMAGES_JS), "text": browser.evaluate(TEXT_JS),
            "error_outputs": browser.evaluate(ERROR_OUTPUTS_JS), "nav": browser.evaluate(NAV_JS)}


def test_every_page_loads_its_images_and_shows_no_error(book):
    browser = book["browser"]
    # index.html (what `ntng book` prints) redirects to the introduction
    redirect = re.search(r'http-equiv="Refresh" content="0; url=([^"]+)"', book["index"].read_text(), re.I)
    assert redirect and redirect.group(1) == "book/intro.html"
    start = _visit(browser, (book["index"].parent / redirect.group(1)).as_uri())
    pages = list(dict.fromkeys(u.split("#")[0] for u in start["nav"]))
    chapters = {c: f"/{c}.html" for c in _chapters(book["index"])}
    # the study's three families, and the plug-in's own under "Other methods"
    assert [c for c in chapters if "family-" in c] == ["book/family-dynamic", "book/family-selection",
                                                       "book/family-optimizers", "book/family-warm_start"]
    for chapter, suffix in chapters.items():
        assert any(u.endswith(suffix) for u in pages) or chapter == "book/intro", f"{chapter} not in the navigation"
    # the appendix is one page linking every executed notebook, which the navigation does not list one by one
    assert not [u for u in pages if "/runs/" in u]
    browser.open((book["index"].parent / "book" / "appendix.html").as_uri())
    runs = browser.evaluate(APPENDIX_LINKS_JS)
    notebooks = sorted(book["results"].glob("smoke/*/*/*/seed*/notebook.ipynb"))
    assert len(runs) == len(notebooks) == 8, "one linked page per executed notebook"
    visited = {}
    for url in pages:
        page = _visit(browser, url)
        visited[url] = page
        broken = [i["src"] for i in page["images"] if i["width"] == 0]
        assert not broken, f"{url}: images that do not load: {broken}"
        assert "Traceback" not in page["text"], f"{url} shows a traceback"
        errors = sorted(set(re.findall(r"\b\w*(?:Error|Exception)\b", page["text"])))
        assert not errors, f"{url} shows error text outside the run records: {errors}"
        assert page["error_outputs"] == 0, f"{url} has error/stderr outputs or Sphinx problem markers"
        # the navigation reaches every chapter from every page
        assert all(any(u.split("#")[0].endswith(s) for u in page["nav"] + [url]) for s in chapters.values())
    figures_per_page = {c: max((len(p["images"]) for u, p in visited.items() if u.endswith(f"/{c}.html")),
                               default=0) for c in _chapters(book["index"])}
    for chapter in ("book/intro", "book/rst", "book/scale", "book/tuning", "book/family-dynamic", "book/family-selection", "book/family-optimizers",
                    "book/family-warm_start", "book/downstream"):
        assert figures_per_page[chapter] >= 1, f"{chapter} has no figure"
    assert figures_per_page["book/family-dynamic"] >= 6  # curves, final, difference, speed-up, wall, active layers
    assert figures_per_page["book/family-selection"] >= 6  # ... and keep rates (no active layers there)
    assert figures_per_page["book/family-optimizers"] == 5
    for url in runs:
        page = _visit(browser, url)
        assert page["images"] and all(i["width"] > 0 for i in page["images"]), f"{url} lost its image output"
        assert "Traceback" not in page["text"]


def _expected_final(results: Path, model: str, method: str, budget: str) -> list[float]:
    out = []
    for summary in sorted((results / syn.PRESET / model / method / budget).glob("seed*/summary.json")):
        record = json.loads(summary.read_text())
        if record["status"] == "complete":
            out.append(record["final_val_loss"])
    return out


def test_figures_span_the_text_column_and_no_number_wraps_at_1280px(book):
    browser = book["browser"]
    browser.call("Emulation.setDeviceMetricsOverride", {"width": 1280, "height": 900, "deviceScaleFactor": 1,
                                                         "mobile": False}, session=True)
    checked = tables = 0
    for page in ("intro", "verdicts", "family-dynamic", "family-selection", "family-optimizers", "controls",
                 "downstream", "scale", "tuning"):
        browser.open((book["index"].parent / "book" / f"{page}.html").as_uri())
        for shown, column in browser.evaluate(FIGURE_WIDTH_JS):
            assert shown >= 0.9 * column, f"{page}: a figure {shown:.0f} px wide in a {column:.0f} px column"
            checked += 1
        assert browser.evaluate(WRAPPED_NUMBERS_JS) == [], f"{page}: numbers broken over two lines"
        for first, content, box in browser.evaluate(TABLE_WIDTHS_JS):  # every table fits: nothing hides
            assert content <= box + 1, f"{page}: the table of {first!r} is {content} px wide in a {box} px box"
            tables += 1
    assert checked >= 10 and tables >= 15
    # the check can fail: the same interval with plain spaces in a column squeezed to one digit's width breaks
    browser.evaluate("""(() => { const td = document.querySelector("main table td");
      td.innerText = "6.125 [6.100, 6.150]"; td.style.maxWidth = "1ch"; td.style.whiteSpace = "normal"; })()""")
    assert browser.evaluate(WRAPPED_NUMBERS_JS) == ["6.125 [6.100, 6.150]"]


def test_the_controls_page_holds_the_optimizers_at_both_batch_sizes(book):
    browser = book["browser"]
    browser.open((book["index"].parent / "book" / "controls.html").as_uri())
    tables = [t for t in browser.evaluate(TABLE_JS) if t and "sequences a step" in t[0]]
    assert len(tables) == 1, "the batch-size control's table"
    header, *rows = tables[0]
    # smoke's BERT takes 16 x 2 sequences a step, the user's control 16 x 8; a row per optimizer and batch size
    shown = {(r[header.index("method")], r[header.index("sequences a step")]) for r in rows}
    assert shown == {(m, b) for m in ("Lion", "Sophia") for b in ("32", "128")}
    text = browser.evaluate(TEXT_JS)
    assert "the larger batch" in text and "baseline, bert" in text and "No records of the batch-size" not in text


def _result_rows(browser) -> dict:
    """(model, method, budget) -> the row of the page's result tables (a table per model, under its name)."""
    rows = {}
    for name, table in browser.evaluate(RESULT_TABLES_JS):
        if table and "final val loss [95% CI]" in table[0]:
            assert "model" not in table[0] and name in ("BERT", "T5"), f"a result table under {name!r}"
            rows.update({(name.lower(), r[0], r[1]): dict(zip(table[0], r, strict=True)) for r in table[1:]})
    return rows


def test_introduction_table_matches_the_run_directories(book):
    browser, results = book["browser"], book["results"]
    browser.open((book["index"].parent / "book" / "intro.html").as_uri())
    rows = _result_rows(browser)
    labels = {"baseline": "baseline", "layer_stacking": "layer stacking", "layer_dropping": "layer dropping",
              "selective_backprop": "selective backprop", "lion": "Lion", "sophia": "Sophia"}
    checked = 0
    for method, label in labels.items():
        for budget in syn.BUDGETS:
            losses = _expected_final(results, "bert", method, budget)
            base = _expected_final(results, "bert", "baseline", budget)
            row = rows[("bert", label, budget)]
            assert row["final val loss [95% CI]"].startswith(f"{sum(losses) / len(losses):.3f}")
            assert row["runs"] == f"{len(losses)}/2"
            assert row["below floor"] == f"{syn.FLOOR['bert'] - sum(losses) / len(losses):.3f}"
            if method != "baseline":
                diff = sum(a - b for a, b in zip(losses, base, strict=True)) / len(losses)
                assert row["vs baseline [95% CI]"].startswith(f"{diff:+.3f}")
            checked += 1
    assert checked == 18
    assert rows[("t5", "Lion", "5s")]["verdict"] == "one seed: higher loss"
    assert rows[("bert", "RHO-LOSS", "5s")]["runs"] == "0/2 (1 diverged, 1 failed)"
    records = browser.evaluate(RECORD_JS)
    for run, file in book["written"]["unreadable"].items():
        assert run in records and file in records, f"{run} ({file}) is not listed as unreadable"
    assert "diverged" in records and "RuntimeError: simulated failure" in records


def test_the_ablation_shows_beside_its_charged_method_and_departures_page_builds(book):
    browser, results = book["browser"], book["results"]
    browser.open((book["index"].parent / "book" / "family-selection.html").as_uri())
    rows = _result_rows(browser)
    losses = _expected_final(results, "bert", syn.VARIANT, "10s")
    base = _expected_final(results, "bert", "baseline", "10s")
    row = rows[("bert", "selective backprop (free scoring)", "10s")]
    assert row["final val loss [95% CI]"].startswith(f"{sum(losses) / len(losses):.3f}")
    diff = sum(a - b for a, b in zip(losses, base, strict=True)) / len(losses)
    assert row["vs baseline [95% CI]"].startswith(f"{diff:+.3f}")
    labels = [method for model, method, _ in rows if model == "bert"]
    assert labels.index("selective backprop (free scoring)") > labels.index("selective backprop")
    browser.open((book["index"].parent / "book" / "family-warm_start.html").as_uri())
    text = browser.evaluate(TEXT_JS)
    assert "Other methods: warm start" in text and "frozen embeddings" in text
    browser.open((book["index"].parent / "book" / "departures.html").as_uri())
    text = browser.evaluate(TEXT_JS)
    from ntng.book.departures import DEPARTURES
    assert all(d.what.replace("'", "\u2019") in text for d in DEPARTURES)  # MyST's typographic apostrophes


def test_the_scale_and_tuning_pages_show_the_probe_and_tuning_records(book):
    browser = book["browser"]
    browser.open((book["index"].parent / "book" / "scale.html").as_uri())
    tables = browser.evaluate(TABLE_JS)
    probe = [t for t in tables if t and "below floor" in t[0] and "peak lr" in t[0]]
    assert len(probe) == 2  # one table per model
    shown = {}
    for table in probe:
        for row in table[1:]:
            cells = dict(zip(table[0], row, strict=True))
            shown[cells["layers x width"], cells["batch"], cells["peak lr"], cells["final loss"]] = cells["below floor"]
    for (model, layers, width, batch, lr), loss in syn.PROBE.items():
        key = (f"{layers} x {width}", str(batch), f"{lr:g}", f"{loss:.3f}")
        assert shown[key] == f"{syn.FLOOR[model] - loss:.3f}", key
    # the reference preset's place in the probe: none of its records exist here, which the page says
    text = browser.evaluate(TEXT_JS)
    assert "No baseline records at `cpu`" in text.replace("‘", "`").replace("’", "`") or \
        "No baseline records at cpu" in text
    browser.open((book["index"].parent / "book" / "tuning.html").as_uri())
    tables = browser.evaluate(TABLE_JS)
    table = next(t for t in tables if t and "chosen" in t[0])
    row = dict(zip(table[0], table[1], strict=True))
    best = min(syn.TUNING_LOSSES, key=syn.TUNING_LOSSES.get)  # lion+lr=0.00035
    # the lowest is the smallest value tried: a step beyond it is still due, so the choice is not final yet
    assert row["chosen"] == best.split("=")[1] + " (so far)" and row["paper"] == "0.0007"
    assert "0.00035: 6.050" in row["tried (final loss)"]


def test_the_book_runs_the_grid_cells_side_by_side_on_a_cpu_preset(tmp_path, monkeypatch):
    import os

    from ntng.experiments import grid

    calls = []

    class Stop(Exception):
        pass

    def record(**kwargs):
        calls.append(kwargs)
        raise Stop

    monkeypatch.setattr(grid, "sweep", record)
    with pytest.raises(Stop):
        build_book(preset="smoke", results=tmp_path / "results", run_grid=True, log=lambda m: None)
    jobs = calls[0]["jobs"]
    assert isinstance(jobs, int) and jobs == max(1, os.cpu_count() or 1)  # smoke asks for one CPU per cell
    assert calls[0]["finetune"] == ["12s"] and calls[0]["preset"] == "smoke"  # smoke: the largest budget only
    assert calls[0]["ablations"] is True  # the paper's ablations at the middle budget


def test_the_book_can_be_built_from_the_records_alone(monkeypatch, tmp_path):
    import ntng.book.build
    from ntng import cli

    calls = []
    monkeypatch.setattr(ntng.book.build, "build_book", lambda **kw: calls.append(kw) or tmp_path / "index.html")
    assert cli.main(["book", "--preset", "cpu", "--records-only", "--results", str(tmp_path)]) == 0
    assert cli.main(["book", "--preset", "cpu", "--results", str(tmp_path)]) == 0
    assert [c["run_grid"] for c in calls] == [False, True] and calls[0]["preset"] == "cpu"


@pytest.mark.parametrize("statuses,tutorial_runs", [(["skipped", "skipped"], False), (["skipped", "complete"], True)])
def test_committed_records_build_the_book_without_training(tmp_path, monkeypatch, statuses, tutorial_runs):
    """Where every cell of the grid is complete nothing trains, the tutorial (which trains) included; where the
    grid ran a cell, the tutorial runs too."""
    import ntng.book.build as build
    from ntng.experiments import grid

    class Stop(Exception):
        pass

    ran = []
    monkeypatch.setattr(grid, "sweep", lambda **kw: [{"status": s} for s in statuses])
    monkeypatch.setattr(build, "run_tutorial", lambda *a, **kw: ran.append(a))
    monkeypatch.setattr(build, "calibrate_here", lambda *a, **kw: None)
    monkeypatch.setattr(build, "stage_sources", lambda *a, **kw: (_ for _ in ()).throw(Stop()))
    with pytest.raises(Stop):
        build_book(preset="smoke", results=tmp_path / "results", run_grid=True, log=lambda m: None)
    assert bool(ran) is tutorial_runs
