"""Checkpoint selection on an exponential moving average of the weights (``train.ema_decay``):
the average follows timm's ModelEmaV3 after every step, validation and the saved model read
it, and a resumed run keeps it as an uninterrupted one does."""

from __future__ import annotations

import contextlib

import numpy as np
import polars as pl
import pytest
import torch
from conftest import make_config
from test_classify import TRAIN_CFG
from test_crops import CROP_CFG

from spinepipe.classify import pipeline, training
from spinepipe.classify.data import CropDataset, Sample
from spinepipe.classify.fold_model import build_model
from spinepipe.classify.weight_averaging import make_ema
from spinepipe.constants import LABEL_COLUMNS, LEVELS
from spinepipe.devices import grad_scaler

DECAY = 0.9
DATA = CROP_CFG | {"slice_jitter": 1, "point_jitter": 2}


@pytest.fixture(autouse=True)
def _one_thread():
    """Models this small gain nothing from a second thread, and on a busy 2-core machine the
    two threads wait on each other (tens of times slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _samples(tmp_path, n: int = 12) -> list[Sample]:
    """Two-view (spinal) samples over random crops, their class shown by a brighter crop: a
    model learns something, so the weights move from epoch to epoch."""
    rng = np.random.default_rng(0)
    side = CROP_CFG["size"] + 2 * CROP_CFG["margin"]
    depth = 2 * (CROP_CFG["slices"] + CROP_CFG["extra_slices"]) + 1
    targets = rng.integers(0, 3, n)
    crops = rng.random((2 * n, depth, side, side), dtype=np.float32)
    crops += np.concatenate([targets, targets])[:, None, None, None] * 0.5
    path = str(tmp_path / "crops.npy")
    np.save(path, crops.astype(np.float16))
    return [Sample(i, LEVELS[i % 5], "center", [f"{i}_spinal_canal_stenosis_{LEVELS[i % 5]}"],
                   [(path, i), (path, n + i)], [[True] * depth] * 2, ["ok", "ok"], np.array([targets[i]]))
            for i in range(n)]


def _fit(samples, cfg, checkpoint, log_metrics=None):
    torch.manual_seed(0)
    model = build_model("spinal", CROP_CFG, cfg)
    return training.fit(model, CropDataset(samples, DATA, train=True, seed=1),
                        CropDataset(samples, DATA, train=False), cfg, device=torch.device("cpu"),
                        seed=1, checkpoint=checkpoint, fingerprint="same", log_metrics=log_metrics)


class _Tiny(torch.nn.Module):
    """A model of the severity models' interface with a BatchNorm (buffers averaged too)."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = torch.nn.BatchNorm1d(4)
        self.linear = torch.nn.Linear(4, 3)

    def forward(self, images: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.linear(self.norm(images)).view(-1, 1, 3)}


def test_the_average_follows_modelemav3s_formula_after_every_step():
    """ema_0 = the initial weights; after each optimizer step k with weights w_k,
    ema_k = d_k * ema_{k-1} + (1 - d_k) * w_k with the warm-up d_k = min(decay, 1 - k^(-2/3))
    counted from d_1 = 0 (parameters and float buffers; the batch counter is copied)."""
    torch.manual_seed(0)
    model = _Tiny()
    ema = make_ema(model, DECAY)
    expected = {k: v.clone().double() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)

    steps = []

    def after_step(*_):
        steps.append(1)
        k = len(steps) - 1  # timm counts from 0 at the first step
        decay = 0.0 if k == 0 else min(DECAY, 1 - (1 + k) ** (-2 / 3))
        for key, value in model.state_dict().items():
            expected[key] = (decay * expected[key] + (1 - decay) * value.double()
                             if value.is_floating_point() else value.clone().double())

    optimizer.register_step_post_hook(after_step)
    batches = [{"image": torch.randn(6, 4) + k, "mask": torch.ones(6, 1, dtype=torch.bool),
                "target": torch.randint(0, 3, (6, 1)), "level": torch.zeros(6, dtype=torch.long)}
               for k in range(7)]
    cpu = torch.device("cpu")
    training._train_epoch(model, iter(batches), optimizer, scheduler, grad_scaler(cpu, None),
                          torch.ones(3), {"aux_weight": 0.0, "grad_clip": 0.0}, cpu, None, ema)
    averaged = ema.module.state_dict()
    for key, value in expected.items():
        assert torch.allclose(averaged[key].double(), value, atol=1e-6), key
    # the average is not the last weights
    assert not torch.allclose(averaged["linear.weight"], model.linear.weight)
    assert int(averaged["norm.num_batches_tracked"]) == len(batches)
    assert make_ema(model, 0.0) is None


def test_the_model_kept_is_the_selected_epochs_average(tmp_path, monkeypatch):
    """Validation reads the average, and fit returns the average of the epoch with the best
    validation loss (the weights train_fold saves), not that epoch's trained weights."""
    samples = _samples(tmp_path)
    states = []
    real_save = training.checkpoints.save

    def save(state, path):  # each epoch's resume state: trained and averaged weights
        states.append({k: {n: t.clone() for n, t in state[k].items()} for k in ("model", "ema")})
        real_save(state, path)

    validated = []
    real_predict = training.predict

    def predict(model, loader, device, amp=None):
        validated.append(model)
        return real_predict(model, loader, device, amp)

    monkeypatch.setattr(training.checkpoints, "save", save)
    monkeypatch.setattr(training, "predict", predict)
    cfg = TRAIN_CFG | {"epochs": 3, "hidden": 8, "ema_decay": DECAY}
    model, history = _fit(samples, cfg, tmp_path / "c.pt")
    best = min(history, key=lambda h: h["val_loss"])["epoch"]
    kept = model.state_dict()
    assert all(torch.equal(kept[k], v) for k, v in states[best]["ema"].items())
    assert not all(torch.equal(kept[k], v) for k, v in states[best]["model"].items())
    assert len(validated) == 3 and not any(m.training for m in validated)
    assert all(m is validated[0] and m is not model for m in validated)  # the average's module


def test_the_fold_model_saved_is_the_selected_epochs_average(tmp_path, monkeypatch):
    """train_fold (tracking faked) saves the average of the selected epoch as the fold
    model's state_dict, a plain state dict of the model's keys that load_model reads."""
    from spinepipe.classify.fold_model import load_model

    samples = _samples(tmp_path)
    states = []
    real_save = training.checkpoints.save

    def save(state, path):
        if "ema" in state:  # an epoch's resume state
            states.append({k: {n: t.clone() for n, t in state[k].items()} for k in ("model", "ema")})
        real_save(state, path)

    @contextlib.contextmanager
    def run(*args, **kwargs):
        yield lambda metrics, step: None

    monkeypatch.setattr(training.checkpoints, "save", save)
    monkeypatch.setattr(pipeline, "mlflow_run", run)
    monkeypatch.setattr(pipeline, "family_samples", lambda *a, **k: samples)
    monkeypatch.setattr(pipeline, "_log_fold_artifacts", lambda *a, **k: None)
    cfg = make_config()["train"] | TRAIN_CFG | {"epochs": 3, "hidden": 8, "ema_decay": DECAY,
                                                 "predicted_point_share": 0.0}
    labels = pl.DataFrame({"study_id": [0], **{c: ["Normal/Mild"] for c in LABEL_COLUMNS}})
    folds = pl.DataFrame({"study_id": [s.study_id for s in samples], "fold": [s.study_id % 3 for s in samples]})
    summary = pipeline.train_fold("spinal", 0, index=pl.DataFrame({"study_id": [], "array": []}), labels=labels,
                                  folds=folds, crop_cfg=CROP_CFG, cfg=cfg, seed=0, tracking={},
                                  parent_run_id=None, out_model=tmp_path / "m.pt",
                                  out_predictions=tmp_path / "p.parquet", checkpoint=tmp_path / "c.pt",
                                  threads=1)
    saved = training.checkpoints.load(tmp_path / "m.pt")["state_dict"]
    selected = states[summary["best_epoch"]]
    assert len(states) == 3 and saved.keys() == selected["ema"].keys()
    assert all(torch.equal(saved[k], v) for k, v in selected["ema"].items())
    assert not all(torch.equal(saved[k], v) for k, v in selected["model"].items())
    model, _ = load_model(tmp_path / "m.pt")  # inference needs nothing else
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())


def test_without_a_decay_nothing_changes(tmp_path, monkeypatch):
    """ema_decay 0: no average is made, and the run is the one of a fit that never calls
    make_ema."""
    samples = _samples(tmp_path)
    cfg = TRAIN_CFG | {"epochs": 2, "hidden": 8}
    monkeypatch.setattr(training, "make_ema", lambda model, decay: None)
    plain, history = _fit(samples, cfg | {"ema_decay": 0.0}, tmp_path / "a.pt")
    monkeypatch.undo()
    monkeypatch.setattr(training, "make_ema", lambda model, decay: pytest.fail("an average was made")
                        if decay else None)
    off, off_history = _fit(samples, cfg | {"ema_decay": 0.0}, tmp_path / "b.pt")
    assert [h["val_loss"] for h in history] == [h["val_loss"] for h in off_history]
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), off.state_dict().values()))
    assert "ema" not in training.checkpoints.load(tmp_path / "b.pt")


def test_resumed_training_with_an_average_equals_uninterrupted(tmp_path):
    """Killed after its second epoch's state was saved, a run resumes with the average of
    then and ends with the same history, selection and weights as one never killed."""
    samples = _samples(tmp_path)
    cfg = TRAIN_CFG | {"epochs": 3, "hidden": 8, "ema_decay": DECAY}

    class Killed(Exception):
        pass

    def kill_at_second_epoch(metrics, epoch):
        if epoch == 1:
            raise Killed

    straight, history = _fit(samples, cfg, tmp_path / "a.pt")
    with pytest.raises(Killed):
        _fit(samples, cfg, tmp_path / "b.pt", kill_at_second_epoch)
    logged = []
    resumed, resumed_history = _fit(samples, cfg, tmp_path / "b.pt", lambda metrics, epoch: logged.append(epoch))
    assert logged == [2]
    for key in ("epoch", "train_loss", "val_loss"):
        assert [h[key] for h in resumed_history] == pytest.approx([h[key] for h in history], rel=1e-5)
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6)
    # the resume states of both runs hold the same average after the last epoch
    ema_a = training.checkpoints.load(tmp_path / "a.pt")["ema"]
    ema_b = training.checkpoints.load(tmp_path / "b.pt")["ema"]
    assert all(torch.allclose(ema_a[k].float(), ema_b[k].float(), atol=1e-6) for k in ema_a)


def test_a_resume_state_without_the_average_starts_afresh(tmp_path):
    """A state saved without an average cannot resume a run that selects on one (its best
    epoch was chosen on other weights): the run trains every epoch again."""
    samples = _samples(tmp_path)
    cfg = TRAIN_CFG | {"epochs": 2, "hidden": 8}
    _fit(samples, cfg, tmp_path / "c.pt")
    logged = []
    _fit(samples, cfg | {"ema_decay": DECAY}, tmp_path / "c.pt", lambda metrics, epoch: logged.append(epoch))
    assert logged == [0, 1]
