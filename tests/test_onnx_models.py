"""ONNX exports of the three models: onnxruntime gives the torch model's logits at other batch
sizes (and other image sizes or slice counts where those axes are dynamic), the export is
deterministic and leaves the model as it was, and a broken file fails clearly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from spinepipe.classify.models import SeverityModel
from spinepipe.localize.models import PointModel, SliceModel
from spinepipe.onnx_models import (
    OnnxModelError,
    OnnxPointModel,
    OnnxSeverityModel,
    OnnxSliceModel,
    export_point_model,
    export_severity_model,
    export_slice_model,
    onnx_path,
)

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def point(tmp_path_factory: pytest.TempPathFactory) -> tuple[PointModel, Path]:
    """A point model, exported at 64 x 64 while in training mode."""
    torch.manual_seed(0)
    model = PointModel("resnet10t", 5)
    model.train()
    path = tmp_path_factory.mktemp("point") / "point_fold0.onnx"
    export_point_model(model, path, 64, 64)
    return model, path


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    assert torch.isfinite(a).all()
    return (a - b).abs().max().item()


def test_point_model_matches_torch(point: tuple[PointModel, Path]) -> None:
    model, path = point
    # exported in eval mode (BatchNorm running statistics), the model's own mode left alone
    assert model.training and all(m.training for m in model.modules())
    model.eval()
    onnx_model = OnnxPointModel(path)
    assert onnx_model.to("cpu").eval() is onnx_model
    torch.manual_seed(1)
    for shape in [(3, 1, 64, 64), (1, 1, 96, 80), (2, 1, 70, 58)]:  # other batch, H and W
        images = torch.randn(shape)
        with torch.no_grad():
            expected = model(images)["logits"]
        out = onnx_model(images)
        assert set(out) == {"logits"}
        assert _max_diff(out["logits"], expected) <= TOLERANCE, shape


def test_point_export_is_deterministic_and_atomic(point: tuple[PointModel, Path], tmp_path: Path) -> None:
    model, path = point
    again = tmp_path / "again.onnx"
    export_point_model(model, again, 64, 64)
    assert again.read_bytes() == path.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.onnx"]  # no temporary left


def test_slice_model_matches_torch_at_other_slice_counts(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = SliceModel("resnet10t", 5).eval()
    path = tmp_path / "slice.onnx"
    export_slice_model(model, path, 7, 32, 32)
    onnx_model = OnnxSliceModel(path).to("cpu").eval()
    torch.manual_seed(1)
    for shape in [(3, 7, 32, 32), (1, 11, 32, 32), (3, 11, 32, 32)]:
        stack = torch.randn(shape)
        with torch.no_grad():
            expected = model(stack)
        out = onnx_model(stack)
        assert out.shape == (shape[0], shape[1], 5)
        assert _max_diff(out, expected) <= TOLERANCE, shape


def test_severity_model_matches_torch_with_masked_rows(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = SeverityModel("resnet10t", 6, 2, "gru", 16, 0.2, True).eval()
    path = tmp_path / "severity.onnx"
    export_severity_model(model, path, 6, 24, 24)
    onnx_model = OnnxSeverityModel(path).to("cpu").eval()
    torch.manual_seed(1)
    images = torch.randn(3, 6, 24, 24)
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[0] = False  # every slice masked: the model keeps them all
    mask[1, 4:] = False
    mask[1, 1] = False
    with torch.no_grad():
        expected = model(images, mask)["logits"]
    out = onnx_model(images, mask)
    assert set(out) == {"logits"}
    assert _max_diff(out["logits"], expected) <= TOLERANCE
    assert _max_diff(onnx_model(images[1:2], mask[1:2])["logits"], expected[1:2]) <= TOLERANCE
    # the mask is an input of the graph, not a constant of the example
    other = onnx_model(images, torch.ones(3, 6, dtype=torch.bool))["logits"]
    assert (other[1] - out["logits"][1]).abs().max() > 1e-3


def test_truncated_or_missing_file_raises(point: tuple[PointModel, Path], tmp_path: Path) -> None:
    _, path = point
    broken = tmp_path / "broken.onnx"
    data = path.read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(OnnxModelError, match="broken.onnx"):
        OnnxPointModel(broken)
    with pytest.raises(OnnxModelError, match="absent.onnx"):
        OnnxPointModel(tmp_path / "absent.onnx")
    with pytest.raises(OnnxModelError, match="expected inputs"):  # a point model is no slice model
        OnnxSliceModel(path)
    assert issubclass(OnnxModelError, ValueError)


def test_onnx_path_lies_beside_the_checkpoint() -> None:
    assert onnx_path(Path("results/bundle/localizers/point_sagittal_t2_fold0.pt")) == Path(
        "results/bundle/localizers/point_sagittal_t2_fold0.onnx")
