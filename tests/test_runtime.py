import pytest
import torch

import mtgmm


def test_device_is_picked_and_overridable(monkeypatch):
    monkeypatch.delenv("MTGMM_DEVICE", raising=False)
    expected = "cuda" if torch.cuda.is_available() else None
    device = mtgmm.pick_device()
    assert device.type in {"cuda", "mps", "cpu"}
    if expected:
        assert device.type == expected
    monkeypatch.setenv("MTGMM_DEVICE", "cpu")
    assert mtgmm.pick_device() == torch.device("cpu")


def test_preset_switch(monkeypatch):
    monkeypatch.delenv("MTGMM_PRESET", raising=False)
    assert mtgmm.preset() == "quick" and mtgmm.by_preset(1, 2) == 1
    monkeypatch.setenv("MTGMM_PRESET", "full")
    assert mtgmm.by_preset(1, 2) == 2
    mtgmm.set_preset("quick")
    try:
        assert mtgmm.by_preset(1, 2) == 1
        assert "preset: quick" in mtgmm.describe()
    finally:
        mtgmm.set_preset(None)


def test_bad_preset_is_rejected(monkeypatch):
    with pytest.raises(ValueError, match="preset"):
        mtgmm.set_preset("huge")
    monkeypatch.setenv("MTGMM_PRESET", "huge")
    with pytest.raises(ValueError, match="MTGMM_PRESET"):
        mtgmm.preset()
