"""The pipeline's models exported to ONNX, and run back by onnxruntime on the CPU.

:func:`export_point_model`, :func:`export_slice_model` and :func:`export_severity_model`
write the ``.onnx`` file that lies beside a checkpoint (:func:`onnx_path`); each exports only
the logits the inference code reads (one output, ``logits``). :class:`OnnxPointModel`,
:class:`OnnxSliceModel` and :class:`OnnxSeverityModel` are called like the torch modules at
inference (torch tensors in, torch tensors out, ``.to(device).eval()`` accepted), so the
calling code is the same for both runtimes.

Exporter: the TorchScript-based one (``dynamo=False``). Both exporters of torch 2.13 give
graphs that onnxruntime runs within 1e-7 of torch for all three models (the point model at
other image sizes, the slice model's GRU at other slice counts, the severity model's masked
attention with a whole row masked). The TorchScript one is chosen because it exports each
model in about 0.5-1 s where ``dynamo=True`` takes 8-11 s, writes byte-identical files from
the same weights (the dynamo export differs from run to run), and declares the slice axis of
the slice model's output dynamic (dynamo declares it fixed at the example's count, so
onnxruntime warns at every call with another count). It is deprecated in torch 2.9+: should a
later torch drop it, ``dynamo=True`` with ``dynamic_shapes`` (``torch.export.Dim``) is the
replacement.
"""

from __future__ import annotations

import io
import logging
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

log = logging.getLogger(__name__)

OPSET = 18
OUTPUT = "logits"
# batch of the example inputs: 2 rather than 1, so that no size-1 axis is traced as a constant
EXAMPLE_BATCH = 2


class OnnxModelError(ValueError):
    """An ONNX model file that is missing, unreadable, or not the model expected."""


def onnx_path(checkpoint_path: Path) -> Path:
    """The ONNX export that lies beside the checkpoint ``checkpoint_path`` (suffix .onnx)."""
    return Path(checkpoint_path).with_suffix(".onnx")


# --- export -----------------------------------------------------------------------------


class _PointLogits(nn.Module):
    """The point model's heatmap logits only (its xy and peak are decoded outside)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)["logits"]


class _SeverityLogits(nn.Module):
    """The severity model's severity logits only (not the auxiliary level logits)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.model(images, mask)["logits"]


def _export(model: nn.Module, exported: nn.Module, args: tuple[torch.Tensor, ...], path: Path,
            input_names: Sequence[str], dynamic_axes: Mapping[str, Mapping[int, str]]) -> None:
    """Export ``exported`` (``model`` or an adapter around it) in eval mode, check the graph,
    and write it atomically to ``path``; ``model``'s train/eval modes are left as they were."""
    path = Path(path)
    # the exporter sets eval mode on the module it is given and afterwards restores that
    # module's own flag on every submodule: save each submodule's flag to restore it exactly
    modes = {module: module.training for module in model.modules()}
    exported.eval()
    buffer = io.BytesIO()
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export")
            warnings.filterwarnings("ignore", message="The feature will be removed")
            # nn.GRU/LSTM's own size checks, constant for a given model; and a caution for RNNs
            # given an initial state sized by the batch, which these models never pass (the
            # ONNX GRU/LSTM starts from zeros at any batch size: the tests run other batches)
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning,
                                    module=r"torch\.nn\.modules\.rnn")
            warnings.filterwarnings("ignore", message="Exporting a model to ONNX with a batch_size other than 1")
            torch.onnx.export(exported, args, buffer, input_names=list(input_names),
                              output_names=[OUTPUT],
                              dynamic_axes={name: dict(axes) for name, axes in dynamic_axes.items()},
                              opset_version=OPSET, do_constant_folding=True, dynamo=False)
    finally:
        for module, training in modes.items():
            module.training = training
    data = buffer.getvalue()
    proto = onnx.load_model_from_string(data)
    onnx.checker.check_model(proto, full_check=True)
    found = [i.name for i in proto.graph.input]
    if found != list(input_names) or [o.name for o in proto.graph.output] != [OUTPUT]:
        raise RuntimeError(f"{path}: exported graph has inputs {found}, expected {list(input_names)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".tmp")
    partial.write_bytes(data)
    os.replace(partial, path)
    log.info("%s: %s exported to ONNX in %.1f s (%.1f MB)", path, type(model).__name__,
             time.perf_counter() - start, len(data) / 1e6)


def export_point_model(model: nn.Module, path: Path, height: int, width: int) -> None:
    """Export a ``PointModel``: input ``images`` (N, 1, H, W) float32 -> output ``logits``
    (N, K, h, w); N, H and W dynamic (the example is ``height`` x ``width``)."""
    example = torch.zeros(EXAMPLE_BATCH, 1, height, width)
    _export(model, _PointLogits(model), (example,), path, ["images"],
            {"images": {0: "batch", 2: "height", 3: "width"},
             OUTPUT: {0: "batch", 2: "map_height", 3: "map_width"}})


def export_slice_model(model: nn.Module, path: Path, slices: int, height: int, width: int) -> None:
    """Export a ``SliceModel``: input ``stack`` (B, S, H, W) float32 -> output ``logits``
    (B, S, n_targets); B and S dynamic (the example has ``slices`` slices)."""
    example = torch.zeros(EXAMPLE_BATCH, slices, height, width)
    _export(model, model, (example,), path, ["stack"],
            {"stack": {0: "batch", 1: "slices"}, OUTPUT: {0: "batch", 1: "slices"}})


def export_severity_model(model: nn.Module, path: Path, n_slices: int, height: int, width: int) -> None:
    """Export a ``SeverityModel``: inputs ``images`` (B, T, H, W) float32 and ``mask`` (B, T)
    bool -> output ``logits`` (B, n_outputs, 3); B dynamic, T = ``n_slices`` fixed (the
    model has one position embedding per slice)."""
    images = torch.zeros(EXAMPLE_BATCH, n_slices, height, width)
    mask = torch.ones(EXAMPLE_BATCH, n_slices, dtype=torch.bool)
    _export(model, _SeverityLogits(model), (images, mask), path, ["images", "mask"],
            {"images": {0: "batch"}, "mask": {0: "batch"}, OUTPUT: {0: "batch"}})


# --- runtime ----------------------------------------------------------------------------


def _session(path: Path, inputs: Sequence[str]) -> ort.InferenceSession:
    """A CPU session of the model file ``path``, checked to have ``inputs`` and ``logits``."""
    if not path.is_file():
        raise OnnxModelError(f"{path}: no ONNX model file here (it is exported beside its "
                             "checkpoint when the bundle is written)")
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # no busy-waiting between runs: each session has its own threads, and spinning ones
    # starve the torch operations (decoding) that run between model calls on the same cores
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime's own exception types (bad protobuf, bad graph)
        reason = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
        raise OnnxModelError(f"{path}: not a loadable ONNX model ({reason}); delete it to "
                             "export it again") from error
    found = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    if found != list(inputs) or OUTPUT not in outputs:
        raise OnnxModelError(f"{path}: inputs {found} and outputs {outputs}; expected inputs "
                             f"{list(inputs)} and output {OUTPUT!r} (another kind of model?)")
    return session


def _numpy(tensor: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().to("cpu", dtype).numpy())


class _OnnxModel:
    """An ONNX model file run by onnxruntime on the CPU (session created at construction, so
    a missing or broken file fails where the model is loaded)."""

    inputs: tuple[tuple[str, torch.dtype], ...] = ()

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.session = _session(self.path, [name for name, _ in self.inputs])

    def eval(self) -> _OnnxModel:
        """No-op (an ONNX graph is in eval mode); for code written for torch modules."""
        return self

    def to(self, *args, **kwargs) -> _OnnxModel:
        """No-op (onnxruntime runs on the CPU); for code written for torch modules."""
        return self

    def _run(self, *tensors: torch.Tensor) -> torch.Tensor:
        feeds = {name: _numpy(t, dtype) for (name, dtype), t in zip(self.inputs, tensors)}
        (logits,) = self.session.run([OUTPUT], feeds)
        return torch.from_numpy(logits).to(tensors[0].device)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"


class OnnxPointModel(_OnnxModel):
    """An exported ``PointModel``: ``m(images)`` (N, 1, H, W) -> ``{"logits": (N, K, h, w)}``."""

    inputs = (("images", torch.float32),)

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self._run(images)}


class OnnxSliceModel(_OnnxModel):
    """An exported ``SliceModel``: ``m(stack)`` (B, S, H, W) -> logits (B, S, n_targets)."""

    inputs = (("stack", torch.float32),)

    def __call__(self, stack: torch.Tensor) -> torch.Tensor:
        return self._run(stack)


class OnnxSeverityModel(_OnnxModel):
    """An exported ``SeverityModel``: ``m(images, mask)`` (B, T, H, W), (B, T) bool ->
    ``{"logits": (B, n_outputs, 3)}`` (no level logits: they serve training only)."""

    inputs = (("images", torch.float32), ("mask", torch.bool))

    def __call__(self, images: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self._run(images, mask)}
