"""Pretrained backbone weights as users have them (timm checkpoints, never a download): every
model kind starts from a .safetensors, .bin, wrapped .pth / .pt file or a model folder with
its first convolution adapted to one channel and its classifier dropped; a file of another
architecture, or one timm would load only in part, is refused naming the file, the model and
the keys; preflight loads each configured file before any job; each model records the file
it started from (path and sha256) in its checkpoint, its MLflow params and the bundle's card.

The checkpoints are written here from seeded timm models (3 channels, 1000 classes)."""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

import polars as pl
import pytest
import safetensors.torch
import torch
from conftest import REPO

from spinepipe import checkpoints
from spinepipe.backbones import (
    POINT_FEATURES,
    POOLED_FEATURES,
    WeightsError,
    create_backbone,
    weights_file,
    weights_provenance,
)
from spinepipe.classify.fold_model import build_model, load_model
from spinepipe.classify.models import SeverityModel
from spinepipe.config import ConfigError, deep_update, load_config
from spinepipe.constants import LABEL_COLUMNS
from spinepipe.localize.models import PointModel, SliceModel
from spinepipe.preflight import model_stack_key, preflight
from spinepipe.torch_compat import import_timm

timm = import_timm()

FIRST_CONV = "conv1.0.weight"  # the deep stem of resnet18d and resnet10t
CLASSIFIER = ("fc.weight", "fc.bias")
# the modules of a resnet up to its stride-8 stage: what the point model's encoder keeps
POINT_MODULES = ("conv1", "bn1", "layer1", "layer2")
FORMATS = ("safetensors", "bin", "pth_state_dict", "pt_model", "folder")
KINDS = {
    "severity": lambda backbone, weights: SeverityModel(backbone, 3, 5, head="meanmax", hidden=8,
                                                        weights=weights).encoder,
    "point": lambda backbone, weights: PointModel(backbone, 5, weights=weights).encoder,
    "slice": lambda backbone, weights: SliceModel(backbone, 5, hidden=8, weights=weights).encoder,
}


def timm_state(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A timm model's state dict as its checkpoints hold it: 3 input channels, a classifier."""
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, in_chans=3, num_classes=1000)
    return {k: v.clone() for k, v in model.state_dict().items()}


def write_weights(state: dict[str, torch.Tensor], folder: Path, form: str) -> Path:
    """``state`` written as a user has it; the path to name in ``weights``."""
    folder.mkdir(parents=True, exist_ok=True)
    if form == "safetensors":
        safetensors.torch.save_file(state, folder / "weights.safetensors")
        return folder / "weights.safetensors"
    if form == "bin":
        torch.save(state, folder / "pytorch_model.bin")
        return folder / "pytorch_model.bin"
    if form == "pth_state_dict":
        torch.save({"state_dict": state, "epoch": 90, "arch": "resnet"}, folder / "checkpoint.pth")
        return folder / "checkpoint.pth"
    if form == "pt_model":
        torch.save({"model": state, "optimizer": {"lr": 0.1}}, folder / "checkpoint.pt")
        return folder / "checkpoint.pt"
    hub = folder / "hub_model"  # a downloaded timm / Hugging Face model folder
    hub.mkdir()
    safetensors.torch.save_file(state, hub / "model.safetensors")
    (hub / "config.json").write_text("{}")
    return hub


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, tuple[dict[str, torch.Tensor], dict[str, Path]]]:
    """Per architecture: its state dict and the path of each format holding it."""
    root = tmp_path_factory.mktemp("weights")
    out = {}
    for name in ("resnet18d", "resnet10t"):
        state = timm_state(name)
        out[name] = state, {form: write_weights(state, root / name / form, form) for form in FORMATS}
    return out


def assert_from_file(encoder: torch.nn.Module, state: dict[str, torch.Tensor], kind: str) -> None:
    """The first convolution as timm adapts it, every other tensor as saved, no classifier,
    and nothing of the backbone left out."""
    loaded = encoder.state_dict()
    assert loaded[FIRST_CONV].shape[1] == 1
    assert torch.equal(loaded[FIRST_CONV], timm.models.adapt_input_conv(1, state[FIRST_CONV]))
    for key, tensor in loaded.items():
        if key != FIRST_CONV:
            assert torch.equal(tensor, state[key]), key  # resnets keep their names as features
    if kind == "point":
        expected = {k for k in state if k.split(".")[0] in POINT_MODULES}
    else:
        expected = set(state) - set(CLASSIFIER)
        assert isinstance(encoder.get_classifier(), torch.nn.Identity)
    assert set(loaded) == expected


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("form", FORMATS)
@pytest.mark.parametrize("name", ["resnet18d", "resnet10t"])
def test_every_model_kind_starts_from_a_timm_checkpoint(saved, name, form, kind):
    state, paths = saved[name]
    encoder = KINDS[kind](name, str(paths[form]))
    assert_from_file(encoder, state, kind)


def test_the_loaded_point_model_runs_on_one_channel(saved):
    _, paths = saved["resnet10t"]
    out = PointModel("resnet10t", 5, weights=str(paths["safetensors"]))(torch.rand(2, 1, 32, 32))
    assert out["logits"].shape == (2, 5, 16, 16) and torch.isfinite(out["xy"]).all()


def test_loading_reaches_no_hub_and_reads_the_file_once(saved, monkeypatch):
    """A timm model whose registry names a hub id and a URL still loads from the local file
    alone: every remote loader of timm fails here, and the file is read once."""
    import timm.models._builder as builder

    def no_network(*args, **kwargs):
        raise AssertionError("a remote weight source was used")

    for remote in ("load_state_dict_from_hf", "load_state_dict_from_url", "download_cached_file"):
        monkeypatch.setattr(builder, remote, no_network)
    reads = []
    monkeypatch.setattr(builder, "load_state_dict", lambda *a, **k: reads.append(a) or no_network())
    state, paths = saved["resnet18d"]
    assert import_timm().models.get_pretrained_cfg("resnet18d").hf_hub_id  # a hub default exists
    for kind in KINDS:
        assert_from_file(KINDS[kind]("resnet18d", str(paths["safetensors"])), state, kind)
    assert reads == []  # timm got the state dict already read, not the path


@pytest.mark.parametrize("kwargs", [POINT_FEATURES, POOLED_FEATURES], ids=["point", "pooled"])
def test_a_checkpoint_of_another_architecture_is_refused(saved, kwargs):
    _, paths = saved["resnet18d"]
    path = paths["safetensors"]
    with pytest.raises(WeightsError) as info:
        create_backbone("resnet10t", path, **kwargs)
    message = str(info.value)
    assert str(path) in message and "'resnet10t'" in message
    assert "unexpected: layer1.1." in message  # resnet18d has two blocks per stage
    assert "conv1.0.weight (file 32x3x3x3, model 24x1x3x3)" in message


def test_a_convnext_refuses_a_resnet_checkpoint(saved):
    path = saved["resnet10t"][1]["bin"]
    with pytest.raises(WeightsError, match=r"not a checkpoint of timm model 'convnext_atto' "
                                           r"\(\d+ missing: stem\.0\.weight"):
        SeverityModel("convnext_atto", 3, 5, head="meanmax", weights=str(path))


def test_missing_extra_and_reshaped_tensors_are_named(saved, tmp_path):
    state = dict(saved["resnet10t"][0])
    del state["layer1.0.conv1.weight"]
    state["extra.weight"] = torch.zeros(3)
    state["layer2.0.bn1.weight"] = torch.zeros(7)
    path = write_weights(state, tmp_path, "bin")
    with pytest.raises(WeightsError) as info:
        create_backbone("resnet10t", path, **POOLED_FEATURES)
    message = str(info.value)
    assert "1 missing: layer1.0.conv1.weight" in message
    assert "1 unexpected: extra.weight" in message
    assert "1 of another shape: layer2.0.bn1.weight (file 7, model 128)" in message


def test_a_headless_checkpoint_loads(saved, tmp_path):
    """A checkpoint saved without its classifier (num_classes=0) is as good."""
    state, _ = saved["resnet10t"]
    headless = {k: v for k, v in state.items() if k not in CLASSIFIER}
    path = write_weights(headless, tmp_path, "safetensors")
    assert_from_file(create_backbone("resnet10t", path, **POOLED_FEATURES), state, "severity")


def test_a_tensor_timm_would_leave_random_is_refused(saved, monkeypatch):
    """timm drops a first convolution it cannot adapt and loads the rest non-strictly: the
    backbone is checked tensor by tensor against the file after loading."""
    import timm.models._builder

    def cannot_adapt(*args, **kwargs):
        raise NotImplementedError("no adaptation")

    monkeypatch.setattr(timm.models._builder, "adapt_input_conv", cannot_adapt)
    path = saved["resnet10t"][1]["safetensors"]
    with pytest.raises(WeightsError, match=r"1 tensors of timm model 'resnet10t' do not come from the "
                                           r"file: conv1\.0\.weight \(not loaded as saved\)"):
        create_backbone("resnet10t", path, **POINT_FEATURES)


def test_a_model_folder_names_its_file(tmp_path):
    (tmp_path / "a").mkdir()
    for name in ("pytorch_model.bin", "model.safetensors", "open_clip_model.pt"):
        (tmp_path / "a" / name).write_bytes(b"x")
    assert weights_file(tmp_path / "a") == tmp_path / "a" / "model.safetensors"
    (tmp_path / "a" / "model.safetensors").unlink()
    assert weights_file(tmp_path / "a") == tmp_path / "a" / "pytorch_model.bin"
    (tmp_path / "a" / "pytorch_model.bin").unlink()
    assert weights_file(tmp_path / "a") == tmp_path / "a" / "open_clip_model.pt"
    (tmp_path / "a" / "other.pth").write_bytes(b"x")
    with pytest.raises(WeightsError, match=r"/a: weights folder .* several candidates "
                                           r"\(open_clip_model\.pt, other\.pth\); name one"):
        weights_file(tmp_path / "a")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match=r"/empty: weights folder .* none found"):
        weights_file(tmp_path / "empty")
    (tmp_path / "weights.npz").write_bytes(b"x")
    with pytest.raises(WeightsError, match="weights.npz: not a weights file"):
        weights_file(tmp_path / "weights.npz")
    with pytest.raises(WeightsError, match="absent.pt: does not exist"):
        weights_file(tmp_path / "absent.pt")


class Payload:
    """Unpickling it would leave a file behind."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return Path.touch, (Path(self.marker),)


def test_a_file_with_a_pickled_object_is_refused_unrun(saved, tmp_path):
    state, _ = saved["resnet10t"]
    path = tmp_path / "checkpoint.pth"
    torch.save({"state_dict": state, "extra": Payload(tmp_path / "ran")}, path)
    with pytest.raises(WeightsError, match="checkpoint.pth: cannot be read as a weights file"):
        create_backbone("resnet10t", path, **POOLED_FEATURES)
    assert not (tmp_path / "ran").exists()
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(WeightsError, match="empty.pt: empty file"):
        create_backbone("resnet10t", tmp_path / "empty.pt", **POOLED_FEATURES)


def test_a_fold_model_rebuilds_without_its_starting_weights(saved, tmp_path):
    """Prediction rebuilds a model from its checkpoint alone: the weights file may be gone."""
    state, _ = saved["resnet10t"]
    weights = write_weights(state, tmp_path / "w", "safetensors")
    crops = {"size": 32, "margin": 0, "slices": 0, "extra_slices": 0}
    train = {"backbone": "resnet10t", "weights": str(weights), "head": "meanmax", "hidden": 8,
             "dropout": 0.0, "aux_weight": 0.0}
    model = build_model("spinal", crops, train)
    checkpoints.save({"state_dict": model.state_dict(),
                      "meta": {"family": "spinal", "fold": 0, "crops": crops, "train": train}},
                     tmp_path / "spinal_fold0.pt")
    weights.unlink()
    rebuilt, _ = load_model(tmp_path / "spinal_fold0.pt")
    for key, tensor in model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[key], tensor), key


def test_provenance_is_the_resolved_file_and_its_sha256(saved):
    _, paths = saved["resnet10t"]
    for form in ("safetensors", "pth_state_dict"):
        path = paths[form]
        assert weights_provenance(str(path)) == {
            "path": str(path.resolve()), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    folder = weights_provenance(paths["folder"])
    assert folder["path"] == str((paths["folder"] / "model.safetensors").resolve())
    assert folder["sha256"] == hashlib.sha256((paths["folder"] / "model.safetensors").read_bytes()).hexdigest()
    assert weights_provenance("") is None and weights_provenance(None) is None


def _config(**weights: str) -> dict:
    """config.yaml with the ``weights`` of the given sections (train, point_model, slice_model)."""
    overlay: dict = {"localize": {}}
    for section, value in weights.items():
        target = overlay if section == "train" else overlay["localize"]
        target[section] = {"weights": value}
    return deep_update(load_config(REPO / "config.yaml"), overlay)


def test_preflight_names_a_weights_file_that_does_not_fit(saved, tmp_path):
    wrong = saved["resnet18d"][1]["safetensors"]  # config.yaml's backbones are resnet10t
    right = saved["resnet10t"][1]["folder"]
    with pytest.raises(ConfigError) as info:
        preflight(_config(train=str(wrong), point_model=str(right)), tmp_path)
    message = str(info.value)
    assert f"train.weights: {wrong}: not a checkpoint of timm model 'resnet10t'" in message
    assert "conv1.0.weight" in message
    assert "point_model.weights" not in message


def test_preflight_checks_a_changed_weights_file_again(saved, tmp_path):
    """A passed weights load is remembered for that file only: replaced or touched, it is
    loaded again."""
    path = tmp_path / "backbone.safetensors"
    path.write_bytes(saved["resnet10t"][1]["safetensors"].read_bytes())
    config = _config(slice_model=str(path))
    preflight(config, tmp_path)
    key = model_stack_key(config, tmp_path)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert model_stack_key(config, tmp_path) != key
    path.write_bytes(saved["resnet18d"][1]["safetensors"].read_bytes())
    with pytest.raises(ConfigError, match=r"localize\.slice_model\.weights: .*backbone\.safetensors: "
                                          r"not a checkpoint of timm model 'resnet10t'"):
        preflight(config, tmp_path)


@contextlib.contextmanager
def _recorded_run(runs: list, tracking, name, params, **kwargs):
    runs.append(params)
    yield lambda metrics, step: None


class _Stop(Exception):
    pass


def test_localizer_training_records_its_starting_weights(saved, tmp_path, monkeypatch):
    """train_fold's MLflow params and checkpoint meta name the file (the training is faked)."""
    from spinepipe.localize import pipeline

    weights = saved["resnet10t"][1]["folder"]
    runs, metas = [], []
    monkeypatch.setattr(pipeline, "mlflow_run", lambda *a, **k: _recorded_run(runs, *a, **k))
    monkeypatch.setattr(pipeline, "fold_samples", lambda *a, **k: ([], []))
    monkeypatch.setattr(pipeline, "train_point_model", lambda *a, **k: (torch.nn.Linear(1, 1), {}))
    monkeypatch.setattr(pipeline, "save_checkpoint", lambda model, out, meta: metas.append(meta))
    config = load_config(REPO / "config.yaml")
    cfg = config["localize"] | {"seed": config["seed"]}  # as rules/localize.smk passes it
    empty = pl.DataFrame()
    for value in (str(weights), ""):
        cfg["point_model"] = cfg["point_model"] | {"weights": value}
        pipeline.train_fold("point", "sagittal_t2", 0, coordinates=empty,
                            stack_index=pl.DataFrame({"series_id": [], "status": []}), instances=empty,
                            series=empty, xref=empty, folds=empty, cfg=cfg, tracking={}, out=tmp_path / "m.pt",
                            threads=1)
    expected = weights_provenance(weights)
    assert metas[0]["start_weights"] == expected and runs[0]["start_weights"] == expected
    assert metas[1]["start_weights"] is None and runs[1]["start_weights"] == "from scratch"


def test_severity_training_records_its_starting_weights(saved, tmp_path, monkeypatch):
    """train_fold builds the model from the file and names it in its params and meta (the
    data and the fitting are faked; the job stops once the model is saved)."""
    import numpy as np

    from spinepipe.classify import pipeline

    weights = saved["resnet10t"][1]["pth_state_dict"]
    runs, saves, built = [], [], []

    def save(obj, path):
        saves.append(obj)
        raise _Stop

    def fit(model, *args, **kwargs):
        built.append(model)
        return model, [{"epoch": 0, "val_loss": 1.0, "val_metric": 1.0}]

    monkeypatch.setattr(pipeline, "mlflow_run", lambda *a, **k: _recorded_run(runs, *a, **k))
    monkeypatch.setattr(pipeline, "family_samples", lambda *a, **k: [])
    monkeypatch.setattr(pipeline, "fit", fit)
    monkeypatch.setattr(pipeline, "predict", lambda *a, **k: (np.zeros((0, 5, 3)), np.zeros((0, 5)), None))
    monkeypatch.setattr(pipeline.checkpoints, "save", save)
    config = load_config(REPO / "config.yaml")
    cfg = config["train"] | {"weights": str(weights), "augment": []}
    labels = pl.DataFrame({"study_id": [1], **{c: ["Normal/Mild"] for c in LABEL_COLUMNS}})
    with pytest.raises(_Stop):
        pipeline.train_fold("spinal", 0, index=pl.DataFrame({"study_id": [], "array": []}), labels=labels,
                            folds=pl.DataFrame({"study_id": [1], "fold": [0]}), crop_cfg=config["crops"],
                            cfg=cfg, seed=0, tracking={}, parent_run_id=None, out_model=tmp_path / "m.pt",
                            out_predictions=tmp_path / "p.parquet", checkpoint=tmp_path / "c.pt", threads=1)
    expected = weights_provenance(weights)
    assert saves[0]["meta"]["start_weights"] == expected and runs[0]["start_weights"] == expected
    assert_from_file(built[0].encoder, saved["resnet10t"][0], "severity")


def test_the_bundle_card_names_each_models_starting_weights():
    from spinepipe.bundle.write import NOT_RECORDED, model_card

    provenance = {"path": "/weights/resnet10t/model.safetensors", "sha256": "ab" * 32}
    localizers = [{"kind": "point", "task": "sagittal_t2", "fold": f, "backbone": "resnet10t",
                   "start_weights": provenance} for f in (0, 1)]
    localizers.append({"kind": "slice", "task": "axial_t2", "fold": 0, "backbone": "resnet10t",
                       "start_weights": NOT_RECORDED})
    severity = [{"family": "spinal", "fold": 0, "backbone": "resnet10t", "head": "gru", "start_weights": None}]
    card = model_card({}, localizers, severity, ["spinal"], [0], {"version": "0", "format": 1, "commit": "c"})
    section = card.split("## Starting weights\n", 1)[1].split("\n\n", 1)[0]
    assert f"- Point localizers: `{provenance['path']}` (sha256 `{'ab' * 32}`)" in section
    assert "- Slice localizers: not recorded" in section
    assert "- Severity models: from scratch (random initialisation)" in section
