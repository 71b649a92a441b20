"""timm imports and runs on this machine's CPU torch: the only matching torchvision is a CUDA build, which spinepipe.torch_compat makes importable."""

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


def test_plain_import_timm_works_in_the_environment():
    """The Makefile's start-up hook makes a bare `import timm` work, and keeps torch out of
    interpreters that never import torchvision."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", "import timm; print(timm.__version__)"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    result = subprocess.run([sys.executable, "-c", "import sys; print('torch' in sys.modules)"],
                            capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "False"
