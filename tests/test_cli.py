"""``python -m mtgmm`` regenerates a chapter's figures (quick preset, one short chapter)."""

from pathlib import Path

from mtgmm.__main__ import main

BOOK = Path(__file__).resolve().parent.parent / "book"


def test_entry_point_writes_figures_and_notebook(tmp_path, monkeypatch):
    monkeypatch.setenv("MTGMM_DEVICE", "cpu")
    assert main(["--quick", "--book", str(BOOK), "--chapters", "ddpm", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "ddpm.ipynb").is_file()
    figures = sorted(tmp_path.glob("ddpm-fig*.png"))
    assert figures and all(f.stat().st_size > 1000 for f in figures)


def test_unknown_chapter_is_an_error(tmp_path):
    assert main(["--book", str(BOOK), "--chapters", "nope", "--out", str(tmp_path)]) == 1
