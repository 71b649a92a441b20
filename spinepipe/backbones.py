"""Backbone factory of every model (localization and severity): a timm model built with one
input channel, trained from scratch or started from local pretrained weights; nothing is
downloaded.

``weights`` names a timm checkpoint as users have it: a ``.safetensors``, ``.bin``, ``.pth``
or ``.pt`` file (a bare state dict, or one under ``state_dict`` or ``model``; timm's reader
prefers EMA weights where a training checkpoint holds them), or a downloaded timm / Hugging
Face model folder (``model.safetensors``, else ``pytorch_model.bin``, else its single
``*.pth`` / ``*.pt``). timm loads it as it loads its own pretrained weights: the 3-channel
first convolution adapted to one channel, the classifier dropped. Torch files are read
weights-only (no unpickling of arbitrary objects).

Nothing else is adapted: the file must hold every tensor of the architecture with its shape,
and nothing more (besides the classifier). The file is checked against the architecture
before loading and every tensor of the built backbone against the file after, so a backbone
is never partly random; a file that does not fit raises :class:`WeightsError` naming the
file, the model and the first keys that differ.

:func:`weights_provenance` gives the resolved file and its sha256 for checkpoints and
tracking. Imports torch and timm only when a model is built, so that resolving a weights
file (preflight's file check) stays light.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)

IN_CHANS = 1
# what tracking records for a backbone trained without pretrained weights
FROM_SCRATCH = "from scratch"
# the backbone's kwargs per model: the point model takes feature maps at strides 4 and 8, the
# slice and severity models pooled features
POINT_FEATURES: Mapping[str, Any] = {"features_only": True, "out_indices": (1, 2)}
POOLED_FEATURES: Mapping[str, Any] = {"num_classes": 0}
WEIGHTS_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")
# a downloaded timm / Hugging Face hub model folder, in order of preference
FOLDER_FILES = ("model.safetensors", "pytorch_model.bin")
# kwargs that shape the wrapper or the head, not the tensors a checkpoint must hold
_HEAD_KWARGS = ("features_only", "out_indices", "feature_cls", "feature_cfg", "num_classes")
# wrappers timm's feature extractors put around the model (FeatureGetterNet, FeatureGraphNet)
_FEATURE_PREFIXES = ("model.", "graph_module.")
_SHOWN = 3  # keys named per kind of difference


class WeightsError(ValueError):
    """A weights file that cannot be found, read, or loaded into its backbone whole."""


def weights_file(weights: str | Path) -> Path:
    """The checkpoint file ``weights`` names: the file itself, or the one of a model folder."""
    path = Path(weights).expanduser()
    if path.is_dir():
        return _folder_file(path)
    if not path.is_file():
        raise WeightsError(f"{path}: does not exist (neither a weights file nor a model folder)")
    if not path.name.endswith(WEIGHTS_SUFFIXES):
        raise WeightsError(f"{path}: not a weights file (expected {', '.join(WEIGHTS_SUFFIXES)})")
    return path


def _folder_file(folder: Path) -> Path:
    for name in FOLDER_FILES:
        if (folder / name).is_file():
            return folder / name
    candidates = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".pth", ".pt"))
    if len(candidates) == 1:
        return candidates[0]
    found = (f"several candidates ({', '.join(p.name for p in candidates)}); name one"
             if candidates else "none found")
    raise WeightsError(f"{folder}: weights folder without a single weights file "
                       f"({' or '.join(FOLDER_FILES)} or one *.pth / *.pt): {found}")


def file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def weights_provenance(weights: str | Path | None) -> dict[str, str] | None:
    """``{"path": resolved file, "sha256": hex}`` of the weights a backbone starts from, or
    None when it is trained from scratch."""
    if not weights:
        return None
    path = weights_file(weights).resolve()
    return {"path": str(path), "sha256": file_sha256(path)}


def create_backbone(name: str, weights: str | Path | None = None, **kwargs: Any) -> nn.Module:
    """A one-channel timm model ``name`` (``kwargs`` as timm takes them) with random weights,
    or the weights of the timm checkpoint ``weights`` (see the module doc; never a hub)."""
    from spinepipe.torch_compat import import_timm

    timm = import_timm()
    if not weights:
        return timm.create_model(name, pretrained=False, in_chans=IN_CHANS, **kwargs)
    path = weights_file(weights)
    state = read_state_dict(path)
    reference = _reference_model(timm, name, kwargs)
    check_fits(state, reference, path, name)
    try:
        # timm's pretrained loader, fed the state dict already read from the local file: every
        # remote source (hub id, URL) is cleared, so nothing can be downloaded. A shallow copy:
        # timm replaces the first convolution and drops the classifier in the dict it is given.
        model = timm.create_model(name, pretrained=True, in_chans=IN_CHANS,
                                  pretrained_cfg_overlay=_local_source(dict(state)), **kwargs)
    except RuntimeError as error:  # e.g. a first convolution timm cannot adapt
        raise WeightsError(f"{path}: timm cannot load it into {name!r}: {_one_line(error)}") from error
    model.pretrained_cfg.pop("state_dict", None)  # the model keeps its cfg: not a second copy
    check_loaded(model, state, _first_conv_weights(reference), path, name)
    log.info("backbone %s: weights from %s", name, path)
    return model


def _local_source(state: dict[str, Any]) -> dict[str, Any]:
    """A pretrained-cfg overlay whose only weight source is the in-memory ``state``."""
    return {"state_dict": state, "source": "", "file": None, "url": None, "hf_hub_id": None}


def read_state_dict(path: Path) -> dict[str, Any]:
    """The bare state dict of a checkpoint file, read by timm as its pretrained loader reads
    it (safetensors; torch files weights-only; unwrapped from ``state_dict`` / ``model``)."""
    from spinepipe.torch_compat import import_timm

    import_timm()
    from timm.models import load_state_dict

    if path.stat().st_size == 0:
        raise WeightsError(f"{path}: empty file")
    try:
        state = load_state_dict(str(path))
    except Exception as error:  # noqa: BLE001 - any unreadable file is reported alike
        raise WeightsError(f"{path}: cannot be read as a weights file: {_one_line(error)}") from error
    if not isinstance(state, Mapping) or not state:
        raise WeightsError(f"{path}: holds no state dict")
    return dict(state)


def _reference_model(timm: Any, name: str, kwargs: Mapping[str, Any]) -> nn.Module:
    """The whole model ``name`` (its default head, no feature wrapper), as a checkpoint of the
    architecture holds it; on the meta device where it builds there (no memory)."""
    import torch

    kwargs = {k: v for k, v in kwargs.items() if k not in _HEAD_KWARGS}
    try:
        with torch.device("meta"):
            return timm.create_model(name, pretrained=False, in_chans=IN_CHANS, **kwargs)
    except Exception:  # noqa: BLE001 - some models cannot be built on meta; build for real
        return timm.create_model(name, pretrained=False, in_chans=IN_CHANS, **kwargs)


def _names(value: str | Iterable[str] | None) -> tuple[str, ...]:
    if not value:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def _first_conv_weights(model: nn.Module) -> set[str]:
    from timm.models import get_model_traits

    first = get_model_traits(model).get("first_conv", model.pretrained_cfg.get("first_conv"))
    return {f"{conv}.weight" for conv in _names(first)}


def _classifier_keys(model: nn.Module) -> set[str]:
    """The keys timm drops from a checkpoint whose head does not fit the model's."""
    return {f"{c}.{p}" for c in _names(model.pretrained_cfg.get("classifier")) for p in ("weight", "bias")}


def check_fits(state: Mapping[str, Any], reference: nn.Module, path: Path, name: str) -> None:
    """Raise WeightsError unless ``state`` holds every tensor of ``reference`` with its shape
    and nothing else, the classifier aside, the first convolution with any input channels."""
    import torch

    dropped = _classifier_keys(reference)
    expected = {k: tuple(v.shape) for k, v in reference.state_dict().items() if k not in dropped}
    given = {k: v for k, v in state.items() if k not in dropped}
    first = _first_conv_weights(reference)
    missing = [k for k in expected if k not in given]
    unexpected = [k for k, v in given.items() if k not in expected or not isinstance(v, torch.Tensor)]
    shapes = [f"{k} (file {_shape(given[k].shape)}, model {_shape(shape)})"
              for k, shape in expected.items()
              if isinstance(given.get(k), torch.Tensor) and not _same_shape(given[k].shape, shape, k in first)]
    if missing or unexpected or shapes:
        parts = [f"{len(keys)} {what}: {', '.join(keys[:_SHOWN])}{', ...' if len(keys) > _SHOWN else ''}"
                 for what, keys in (("missing", missing), ("unexpected", unexpected),
                                    ("of another shape", shapes)) if keys]
        raise WeightsError(f"{path}: not a checkpoint of timm model {name!r} ({'; '.join(parts)})")


def _shape(shape: Iterable[int]) -> str:
    return "x".join(map(str, shape)) or "scalar"


def _same_shape(saved: Iterable[int], model: Iterable[int], first_conv: bool) -> bool:
    """Equal shapes; a first convolution may differ in its input channels (timm adapts them)."""
    saved, model = list(saved), list(model)
    if first_conv and len(saved) == len(model) == 4:
        return saved[:1] + saved[2:] == model[:1] + model[2:]
    return saved == model


def _source_key(key: str, state: Mapping[str, Any]) -> str | None:
    """The checkpoint key of the built backbone's ``key``: the same, or the name before timm's
    feature extractor wrapped the model or flattened its first-level Sequentials (a_0 -> a.0)."""
    if key in state:
        return key
    candidates = [key.removeprefix(p) for p in _FEATURE_PREFIXES if key.startswith(p)]
    head, dot, rest = key.partition(".")
    candidates += [head[:i] + "." + head[i + 1:] + dot + rest for i, c in enumerate(head) if c == "_"]
    found = [c for c in dict.fromkeys(candidates) if c in state]
    return found[0] if len(found) == 1 else None


def check_loaded(model: nn.Module, state: Mapping[str, Any], first_conv: set[str], path: Path,
                 name: str) -> None:
    """Raise WeightsError unless every tensor of the built ``model`` is the file's, the first
    convolution as timm adapts it: no part of a backbone stays randomly initialised."""
    from timm.models import adapt_input_conv

    base_chans = (model.pretrained_cfg.get("input_size") or (3,))[0]
    differ = []
    for key, tensor in model.state_dict().items():
        source = _source_key(key, state)
        if source is None:
            differ.append(f"{key} (not in the file)")
            continue
        saved = state[source]
        if source in first_conv and saved.shape != tensor.shape:
            saved = adapt_input_conv(IN_CHANS, saved, base_chans=base_chans)
        if not _equal(tensor, saved):
            differ.append(f"{key} (not loaded as saved)")
    if differ:
        raise WeightsError(f"{path}: {len(differ)} tensors of timm model {name!r} do not come from "
                           f"the file: {', '.join(differ[:_SHOWN])}{', ...' if len(differ) > _SHOWN else ''}")


def _equal(tensor: torch.Tensor, saved: torch.Tensor) -> bool:
    import torch

    return tensor.shape == saved.shape and torch.equal(tensor, saved.to(tensor.dtype))


def _one_line(error: BaseException) -> str:
    return " ".join(f"{type(error).__name__}: {error}".split())[:400]
