"""The HTML report: library, ``qbscale report`` through CliRunner, and a headless
Chromium rendering (skipped only when no Chromium is installed)."""

from __future__ import annotations

import base64
import gzip
import json
import re
import shutil
import subprocess

import numpy as np
import pytest

import qbscale
from qbscale.analysis import hubness as hub
from qbscale.analysis.compare import compare
from qbscale.analysis.report import load_items, write_report
from qbscale.storage.stores.store import in_memory

PNG = b"\x89PNG\r\n\x1a\n"


def problem(seed: int = 4, n_gallery: int = 40):
    rng = np.random.default_rng(seed)
    gallery = rng.standard_normal((n_gallery, 8))
    bank = rng.standard_normal((150, 8)) @ gallery.T
    test = rng.standard_normal((2 * n_gallery, 8)) @ gallery.T
    test[:, :2] += 2.0  # two hubs
    test[np.arange(2 * n_gallery), np.arange(2 * n_gallery) // 2] += 2.5
    return bank.astype(np.float32), test.astype(np.float32), \
        (rng.standard_normal((20, 8)) @ gallery.T).astype(np.float32)


@pytest.fixture(scope="module")
def comparison():
    bank, test, gb = problem()
    return compare(in_memory(bank, test), k=4, sweep=True, gallery_bank=gb,
                   scheduler="synchronous")


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    path = tmp_path_factory.mktemp("items") / "items.jsonl.gz"
    with gzip.open(path, "wt") as fh:
        for j in range(40):
            fh.write(json.dumps({"id": f"item{j}", "code": f"\n  def f{j}(x):\n    return x"})
                     + "\n")
    return path


def test_load_items_takes_the_first_line_of_the_first_field(tmp_path, items):
    assert load_items(items)[:2] == ["def f0(x):", "def f1(x):"]
    plain = tmp_path / "items.jsonl"
    plain.write_text('{"id": "a", "query": "find <b>x</b>"}\n\n{"id": "b"}\n')
    assert load_items(plain) == ["find <b>x</b>", "b"]


def test_report_page_holds_tables_and_figures(comparison, items, tmp_path):
    page = write_report(comparison, tmp_path / "out", items, title="A <test> report")
    text = page.read_text()
    assert "<title>A &lt;test&gt; report</title>" in text
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    assert len(images) == 2
    for data, name in zip(images, ("occurrence.png", "sweeps.png"), strict=True):
        raw = base64.b64decode(data)
        assert raw.startswith(PNG) and raw == (tmp_path / "out" / name).read_bytes()
    for run in comparison.runs:  # a metrics row per method, with its R@1
        assert f"<tr><th>{run.label}</th>" in text
        assert f"{run.metrics['R1']:.1f}" in text
    hubs = hub.hubs(comparison.before_occurrence)
    assert f"<td>{hubs[0]}</td><td>{comparison.before_occurrence[hubs[0]]}</td>" in text
    assert f"<code>def f{hubs[0]}(x):</code>" in text
    assert "no longer among them after" in text


def test_sweep_covers_every_grid_value_in_one_pass(comparison):
    from qbscale.engine import methods

    for run in comparison.runs:
        grid = set(methods.get(run.result.config.method).variant.grid)
        assert grid | {run.default} == set(run.result.after) == set(run.hubness)


def test_cli_report_writes_the_page(tmp_path, items, cli_invoke):
    bank, test, _ = problem(5)
    store = qbscale.ingest(tmp_path / "exp.zarr", bank, test, chunk_rows=30, progress=False)
    res = cli_invoke("report", store, "-o", tmp_path / "rep", "--depth", "3", "--items", items,
                     "--method", "dis", "--method", "nnn", "--quiet")
    assert res.output.strip() == \
        f"Wrote {tmp_path / 'rep' / 'index.html'} (dis, nnn; N_k at depth 3)"
    text = (tmp_path / "rep" / "index.html").read_text()
    assert "<tr><th>nnn</th><td>alpha = 0.75</td>" in text and "dual-is" not in text


def _chromium() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser",
                                                "google-chrome")) if p), None)


@pytest.mark.skipif(_chromium() is None, reason="no Chromium installed")
def test_page_renders_in_headless_chromium(comparison, items, tmp_path):
    import matplotlib.image

    page = write_report(comparison, tmp_path / "out", items)
    shot = tmp_path / "shot.png"
    subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'ud'}",
                    f"--screenshot={shot}", "--window-size=1200,2400", page.as_uri()],
                   check=True, capture_output=True, timeout=120)
    pixels = matplotlib.image.imread(shot)[..., :3]
    assert pixels.shape[:2] == (2400, 1200)
    ink = (pixels.mean(axis=2) < 0.9).mean(axis=1)  # share of dark pixels per screen row
    assert (ink[:1200] > 0.01).sum() > 300  # tables and figures fill the top half


def test_report_diagnostics_section(comparison, tmp_path):
    from qbscale.analysis.diagnose import diagnose

    bank, test, _ = problem()
    d = diagnose(in_memory(bank, test), k=1, depth=4, scheduler="synchronous")
    page = write_report(comparison, tmp_path / "out", diagnosis=d)
    text = page.read_text()
    assert "Will QB-Norm help? Diagnostics of the querybank" in text
    assert f"<td>{d['spearman']:.3f}</td>" in text and f"<td>{d['ks']:.3f}</td>" in text
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    assert base64.b64decode(images[-1]) == (tmp_path / "out" / "diagnostics.png").read_bytes()
    assert "QB-Norm with this bank is" in text


def test_cli_report_diagnoses_unless_told_not_to(tmp_path, cli_invoke):
    bank, test, _ = problem(5)
    store = qbscale.ingest(tmp_path / "exp.zarr", bank, test, chunk_rows=30, progress=False)
    for flag, present in (([], True), (["--no-diagnose"], False)):
        out = tmp_path / f"rep{present}"
        cli_invoke("report", store, "-o", out, "--method", "dis", "-q", *flag)
        assert ("Diagnostics of the querybank" in (out / "index.html").read_text()) is present
        assert (out / "diagnostics.png").exists() is present


def test_a_report_is_written_only_into_a_new_empty_or_report_folder(comparison, tmp_path):
    """write_report marks its folder (qbscale-report.json) and replaces only such a
    folder (not without overwrite); a folder of the user's own files is refused
    before anything is written into it."""
    from qbscale.errors import StoreExistsError
    from qbscale.storage.durability.paths import REPORT_MARKER

    page = write_report(comparison, tmp_path / "rep")
    assert json.loads((tmp_path / "rep" / REPORT_MARKER).read_text())["kind"] == "report"
    first = page.read_bytes()
    with pytest.raises(StoreExistsError, match="pass --overwrite"):
        write_report(comparison, tmp_path / "rep", title="again", overwrite=False)
    assert page.read_bytes() == first
    write_report(comparison, tmp_path / "rep", title="again")
    assert "again" in page.read_text()
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("my page")
    for overwrite in (False, True):
        with pytest.raises(StoreExistsError, match="not a report"):
            write_report(comparison, site, overwrite=overwrite)
    assert sorted(p.name for p in site.iterdir()) == ["index.html"]
    assert (site / "index.html").read_text() == "my page"
