"""Model files and checkpoints are read weights-only: a file under results/ holding a pickled
object is refused (its code never runs), and what the pipeline saves loads that way."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from spinepipe import checkpoints
from spinepipe.checkpoints import CheckpointError
from spinepipe.classify.fold_model import build_model, load_model
from spinepipe.classify.training import fit
from spinepipe.localize.inference import load_models
from spinepipe.localize.models import PointModel
from spinepipe.localize.predict import localize
from spinepipe.localize.training import save_checkpoint

CROPS = {"size": 32, "margin": 0, "slices": 0, "extra_slices": 0}
TRAIN = {"backbone": "resnet10t", "weights": "", "head": "meanmax", "hidden": 8, "dropout": 0.0,
         "aux_weight": 0.0, "epochs": 1, "batch_size": 4, "lr": 1e-3, "weight_decay": 0.0,
         "warmup_epochs": 0, "grad_clip": 1.0, "class_weights": [1.0, 2.0, 4.0],
         "select_by": "loss", "num_workers": 0, "pin_memory": False, "prefetch_factor": 2,
         "precision": "fp32", "channels_last": False, "ema_decay": 0.0}


def _run_on_load(marker: str) -> str:
    """What the payload makes the unpickler call: leaves a file behind."""
    Path(marker).write_text("unpickled")
    return "ran"


class Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return _run_on_load, (self.marker,)


def _payloads(tmp_path: Path) -> dict[str, object]:
    return {"custom object": Payload(tmp_path / "marker"), "path": Path("/etc/passwd")}


def _write(path: Path, extra: object, tmp_path: Path, kind: str) -> None:
    """A file at ``path`` that the old loaders would accept, with ``extra`` pickled in."""
    if kind == "severity":
        state = build_model("spinal", CROPS, TRAIN).state_dict()
        meta = {"family": "spinal", "fold": 0, "crops": CROPS, "train": TRAIN, "extra": extra}
        torch.save({"state_dict": state, "meta": meta}, path)
    elif kind in ("localizer", "localize stage"):
        state = PointModel("resnet10t", 5).state_dict()
        torch.save({"state_dict": state, "meta": {"backbone": "resnet10t", "kind": "point",
                                                   "task": "sagittal_t2", "fold": 0, "extra": extra}}, path)
    else:  # a training checkpoint to resume from
        torch.save({"fingerprint": "same", "epoch": 0, "extra": extra}, path)


@pytest.mark.parametrize("payload", ["custom object", "path"])
@pytest.mark.parametrize("kind", ["severity", "localizer", "localize stage", "resume"])
def test_loaders_refuse_pickled_objects(tmp_path, kind, payload):
    path = tmp_path / "model.pt"
    _write(path, _payloads(tmp_path)[payload], tmp_path, kind)
    with pytest.raises(CheckpointError, match="refusing to load"):
        if kind == "severity":
            load_model(path)
        elif kind == "localizer":
            load_models({"point_sagittal_t2": [path]})
        elif kind == "localize stage":  # reads each model's meta to group the folds
            nothing = {"study_id": pl.Int64, "series_id": pl.Int64, "instance_number": pl.Int64,
                       "path": pl.String, "status": pl.String, "geometry_ok": pl.Boolean}
            empty = pl.DataFrame(schema=nothing)
            localize("test", checkpoints=[path], stack_index=empty, instances=empty, series=empty,
                     folds=None, cfg={}, threads=1)
        else:
            model = build_model("spinal", CROPS, TRAIN)
            fit(model, [None], [None], TRAIN, device=torch.device("cpu"), seed=0, checkpoint=path,
                fingerprint="same")
    assert not (tmp_path / "marker").exists()  # the payload never ran


def test_saved_files_load_weights_only(tmp_path):
    model = build_model("spinal", CROPS, TRAIN)
    checkpoints.save({"state_dict": model.state_dict(),
                      "meta": {"family": "spinal", "fold": np.int64(0), "crops": CROPS, "train": TRAIN,
                               "score": np.float32(0.5), "where": Path("results/x"),
                               "array": np.arange(3), "pair": (1, 2)}}, tmp_path / "m.pt")
    loaded, meta = load_model(tmp_path / "m.pt")
    assert meta["fold"] == 0 and type(meta["fold"]) is int
    assert meta["where"] == "results/x" and meta["pair"] == (1, 2)
    assert torch.equal(meta["array"], torch.arange(3))
    save_checkpoint(PointModel("resnet10t", 5), tmp_path / "p.pt",
                    {"backbone": "resnet10t", "kind": "point", "task": "sagittal_t2", "fold": 0,
                     "metrics": {"val_loss": np.float64(1.0)}})
    assert len(load_models({"point_sagittal_t2": [tmp_path / "p.pt"]})["sagittal_t2"].point) == 1


def test_unsupported_objects_are_refused_at_save_time(tmp_path):
    with pytest.raises(TypeError, match=r"meta.*\['bad'\]"):
        checkpoints.save({"meta": {"bad": object()}}, tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    import random

    checkpoints.save({"rng": checkpoints.rng_state()}, tmp_path / "rng.pt")
    expected = (np.random.rand(), random.random(), torch.rand(1).item())
    checkpoints.set_rng_state(checkpoints.load(tmp_path / "rng.pt")["rng"])
    assert (np.random.rand(), random.random(), torch.rand(1).item()) == expected
