"""``python -m mtgmm`` regenerates a chapter's figures (quick preset, one short chapter)."""

from pathlib import Path

from mtgmm.__main__ import main

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
    from mtgmm.__main__ import _write_times

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
