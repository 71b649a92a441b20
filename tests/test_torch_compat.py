"""timm imports and runs on this machine's CPU torch (see DEVELOPERS.md, known traps)."""

from __future__ import annotations


def test_timm_imports_and_runs_a_model():
    from spinepipe.torch_compat import import_timm

    timm = import_timm()
    import torch

    model = timm.create_model("efficientnet_b0", pretrained=False, num_classes=3, in_chans=1)
    model.eval()
    with torch.no_grad():
        out = model(torch.zeros(2, 1, 64, 64))
    assert out.shape == (2, 3) and torch.isfinite(out).all()
