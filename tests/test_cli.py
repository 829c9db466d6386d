"""``python -m mtgmm`` regenerates a chapter's figures (quick preset, one short chapter)."""

import sys
from pathlib import Path

from mtgmm.__main__ import main

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))

BOOK = Path(__file__).resolve().parent.parent / "book"


def test_entry_point_writes_figures_and_notebook(tmp_path, monkeypatch):
    monkeypatch.setenv("MTGMM_DEVICE", "cpu")
    assert (
        main(
            [
                "--quick",
                "--book",
                str(BOOK),
                "--chapters",
                "ddpm",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    assert (tmp_path / "ddpm.ipynb").is_file()
    assert (tmp_path / "times.csv").read_text().count("ddpm") == 1
    figures = sorted(tmp_path.glob("ddpm-fig*.png"))
    assert figures and all(f.stat().st_size > 1000 for f in figures)


def test_unknown_chapter_is_an_error(tmp_path):
    assert (
        main(["--book", str(BOOK), "--chapters", "nope", "--out", str(tmp_path)]) == 1
    )


def test_times_merge_by_chapter_preset_and_device(tmp_path):
    from full_preset import _write_times

    path = tmp_path / "t.csv"
    _write_times(
        path,
        [["a", "full", "cuda", "10", "m", "d"], ["b", "full", "cuda", "20", "m", "d"]],
        True,
    )
    _write_times(
        path,
        [["b", "full", "cuda", "25", "m", "d"], ["b", "full", "cpu", "90", "m", "d"]],
        True,
    )
    rows = path.read_text().splitlines()
    assert rows[1:] == ["a,full,cuda,10,m,d", "b,full,cuda,25,m,d", "b,full,cpu,90,m,d"]


def test_record_keeps_notebook_figures_and_peak_memory(tmp_path, monkeypatch):
    import csv
    import shutil

    import nbformat

    monkeypatch.setenv("MTGMM_DEVICE", "cpu")
    book = tmp_path / "book"
    book.mkdir()
    shutil.copy(BOOK / "ddpm.md", book)
    args = ["--quick", "--record", "--book", str(book), "--out", str(tmp_path / "o")]
    assert main(args) == 0
    (row,) = list(csv.DictReader((book / "full_scale.csv").open()))
    assert row["Chapter"] == "{doc}`ddpm`" and row["Preset"] == "quick"
    assert 0.05 < float(row["Peak (GB)"]) < 8
    notebook = nbformat.read(book / "full" / "ddpm.ipynb", as_version=4)
    outputs = [o for c in notebook.cells for o in c.get("outputs", [])]
    assert not any("image/png" in o.get("data", {}) for o in outputs)
    pointers = [o["data"]["text/plain"] for o in outputs if "[figure" in str(o)]
    figures = sorted((book / "full").glob("ddpm-fig*.png"))
    assert figures and len(pointers) == len(figures)
    index = (book / "full" / "figures.md").read_text()
    assert "{download}`full/ddpm.ipynb`" in index and "quick preset" in index
    assert index.count(":::{figure} full/ddpm-fig") == len(figures)


def test_a_failing_check_is_recorded_and_the_chapter_goes_on(tmp_path, monkeypatch):
    import csv
    import shutil

    monkeypatch.setenv("MTGMM_DEVICE", "cpu")
    book = tmp_path / "book"
    book.mkdir()
    shutil.copy(BOOK / "ddpm.md", book)
    text = (book / "ddpm.md").read_text()
    cut = text.index("## The forward process")
    check = "```{code-cell} ipython3\nassert 1 + 1 == 3\n```\n\n"
    (book / "ddpm.md").write_text(text[:cut] + check + text[cut:])
    args = ["--quick", "--record", "--book", str(book), "--out", str(tmp_path / "o")]
    assert main(args) == 1
    (row,) = list(csv.DictReader((book / "full_scale.csv").open()))
    assert row["Failed"] == "1"
    index = (book / "full" / "figures.md").read_text()
    assert "1 code cell(s) raise" in index and "``assert 1 + 1 == 3``" in index
    assert index.count(":::{figure}") >= 1  # the cells after the failure ran
