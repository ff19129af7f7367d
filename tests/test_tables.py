"""Several stores: mean(std) rows and the paper's markdown table, library and CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

import qbscale
from qbscale.analysis import tables
from qbscale.engine.metrics import NAMES
from qbscale.errors import ConfigError
from qbscale.storage.stores.store import in_memory


def seeds(n: int = 3) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for seed in range(n):
        rng = np.random.default_rng(seed)
        bank = rng.standard_normal((200, 30)).astype(np.float32)
        test = rng.standard_normal((60, 30)).astype(np.float32)
        test[np.arange(60), np.arange(60) // 2] += 1.2 + 0.3 * seed
        out.append((bank, test))
    return out


@pytest.fixture(scope="module")
def results():
    return [qbscale.run(in_memory(b, t), beta=[10, 20]) for b, t in seeds()]


def test_mean_and_std_are_numpys(results):
    rows = tables.summarise(results)
    assert [(r["method"], r["value"]) for r in rows] == [("none", None), ("dis", 10.0),
                                                         ("dis", 20.0)]
    per_setting = [[r.before for r in results], [r.after[10.0] for r in results],
                   [r.after[20.0] for r in results]]
    for row, metrics in zip(rows, per_setting, strict=True):
        for name in NAMES:
            values = [m[name] for m in metrics]
            assert row["mean"][name] == pytest.approx(np.mean(values), rel=1e-12)
            assert row["std"][name] == pytest.approx(np.std(values, ddof=0), abs=1e-12)
        assert row["n"] == 3


def expected_markdown(results, label):
    head = ["| model | R@1 | R@5 | R@10 | MdR | Geom |", "| --- | --- | --- | --- | --- | --- |"]
    keys = ("R1", "R5", "R10", "MedR", "geometric_mean_R1-R5-R10")
    lines = list(head)
    for name, metrics in ((label, [r.before for r in results]),
                          (f"{label} (+QB-Norm)", [r.after[20.0] for r in results])):
        cells = [f"{np.mean([m[k] for m in metrics]):.1f}({np.std([m[k] for m in metrics]):.1f})"
                 for k in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def test_markdown_is_the_papers_format():
    results = [qbscale.run(in_memory(b, t), beta=20) for b, t in seeds()]
    assert tables.markdown(tables.summarise(results), "CE+") == expected_markdown(results, "CE+")
    one = tables.markdown(tables.summarise(results[:1]), "CLIP")
    m = results[0].before
    assert one.splitlines()[2] == (f"| CLIP | {m['R1']:.1f} | {m['R5']:.1f} | {m['R10']:.1f} | "
                                   f"{m['MedR']:.1f} | {m['geometric_mean_R1-R5-R10']:.1f} |")


def test_refuses_mixed_settings(results):
    other = qbscale.run(in_memory(*seeds(1)[0]), beta=30)
    with pytest.raises(ConfigError, match="different settings"):
        tables.summarise([results[0], other])
    with pytest.raises(ConfigError, match="no runs"):
        tables.summarise([])


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("seeds")
    return [qbscale.ingest(root / f"S{n}.zarr", b, t, progress=False)
            for n, (b, t) in enumerate(seeds())]


def test_cli_several_stores(stores, tmp_path, cli_invoke):
    out = tmp_path / "m.json"
    res = cli_invoke("run", *stores, "-q", "--json", out)
    got = json.loads(out.read_text())
    direct = [qbscale.run(s) for s in stores]
    assert [s["store"] for s in got["stores"]] == stores
    for entry, result in zip(got["stores"], direct, strict=True):
        assert entry["before"] == result.before and entry["after"]["20.0"] == result.after[20.0]
    assert got["summary"]["ddof"] == 0
    r1 = [r.after[20.0]["R1"] for r in direct]
    assert got["summary"]["rows"][1]["mean"]["R1"] == pytest.approx(np.mean(r1))
    assert got["summary"]["rows"][1]["std"]["R1"] == pytest.approx(np.std(r1))
    assert all(s in res.output for s in stores)
    assert "mean(std) over 3 stores" in res.output
    cell = f"{np.mean(r1):.1f}({np.std(r1):.1f})"
    assert cell in res.output.splitlines()[-1]

    md = cli_invoke("run", *stores, "-q", "--format", "markdown", "--label", "TT")
    assert md.output.strip() == expected_markdown(direct, "TT")


def test_cli_single_store_output_is_unchanged(stores, cli_invoke):
    from qbscale.cli.run import format_table

    res = cli_invoke("run", stores[0], "-q")
    table = format_table(qbscale.run(stores[0]).table())
    assert res.output.startswith(table + "\nnormalised rows: ")
    assert "mean(std)" not in res.output
