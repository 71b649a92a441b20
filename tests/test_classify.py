"""Severity models: shapes and masking, the loss, the schedule, temperature scaling, resume,
learning on the tiny dataset, the submission's fallbacks, and the end-to-end out-of-fold
evaluation (no leak, the submission's fallbacks, both CVs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from test_crops import CROP_CFG, crops_from_annotations

from spinepipe.classify.data import CropDataset, family_samples, label_targets
from spinepipe.classify.end_to_end import end_to_end_predictions, evaluate_cv
from spinepipe.classify.evaluate import fit_temperature
from spinepipe.classify.fold_model import LOGITS, PREDICTION_SCHEMA, build_model, predictions_frame
from spinepipe.classify.held_out import LeakError, check_no_leak, held_out_studies
from spinepipe.classify.inference import (
    assemble_submission,
    ensemble,
    flip_spinal,
    validate_submission,
)
from spinepipe.classify.models import SeverityModel
from spinepipe.classify.training import fit, loader_options, lr_lambda, make_loader, severity_loss
from spinepipe.constants import LABEL_COLUMNS, LEVELS
from spinepipe.dataset import read_labels
from spinepipe.folds import make_folds
from spinepipe.metric import (
    labels_to_long,
    prior_predictions,
    prior_table,
    score,
    weighted_log_loss,
)

TRAIN_CFG = {"backbone": "resnet10t", "weights": "", "head": "gru", "hidden": 16, "dropout": 0.0,
             "aux_weight": 0.2, "epochs": 2, "batch_size": 8, "lr": 2e-3, "weight_decay": 0.0,
             "warmup_epochs": 1, "grad_clip": 1.0, "class_weights": [1.0, 2.0, 4.0],
             "select_by": "loss", "slice_jitter": 1, "point_jitter": 2, "skip_missing": True,
             "augment": [], "num_workers": 0, "pin_memory": False, "prefetch_factor": 2, "device": "cpu",
             "temperature_scaling": True, "precision": "fp32", "channels_last": False,
             "ema_decay": 0.0}


@pytest.mark.parametrize("head", ["gru", "lstm", "meanmax"])
def test_model_shapes_and_masked_slices(head):
    torch.manual_seed(0)
    model = SeverityModel("resnet10t", n_slices=6, n_outputs=5, head=head, hidden=8).eval()
    images = torch.randn(3, 6, 24, 24)
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[1, 3:] = False
    mask[2] = False  # nothing usable: still a finite output
    out = model(images, mask)
    assert out["logits"].shape == (3, 5, 3) and out["level_logits"].shape == (3, 5)
    assert torch.isfinite(out["logits"]).all()
    # what a masked slice holds does not change the prediction
    changed = images.clone()
    changed[1, 3:] = 100.0
    assert torch.allclose(model(changed, mask)["logits"][1], out["logits"][1], atol=1e-5)


def test_loss_ignores_missing_labels_and_weighs_severe_more():
    logits = torch.zeros(2, 1, 3)
    out = {"logits": logits}
    weights = torch.tensor([1.0, 2.0, 4.0])
    level = torch.zeros(2, dtype=torch.long)
    uniform = np.log(3.0)
    loss = severity_loss(out, torch.tensor([[0], [-1]]), level, weights, 0.0)
    assert abs(float(loss) - uniform) < 1e-6  # the unlabelled row contributes nothing
    confident = torch.tensor([[[5.0, 0.0, 0.0]], [[5.0, 0.0, 0.0]]])
    mild_true = severity_loss({"logits": confident}, torch.tensor([[0], [2]]), level, weights, 0.0)
    p = torch.softmax(confident[0, 0], 0)
    by_hand = -(1 * torch.log(p[0]) + 4 * torch.log(p[2])) / 5
    assert abs(float(mild_true) - float(by_hand)) < 1e-5
    assert float(severity_loss({"logits": logits}, torch.tensor([[-1], [-1]]), level, weights, 0.0)) == 0.0


def test_warmup_then_cosine():
    f = lr_lambda(10, 110)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.5) and f(110) == pytest.approx(0.0, abs=1e-9)


def test_loader_pins_memory_only_for_a_gpu_and_prefetches_only_with_workers():
    cfg = {"pin_memory": True, "prefetch_factor": 3}
    assert loader_options(cfg, torch.device("cpu")) == {"pin_memory": False, "prefetch_factor": 3}
    assert loader_options(cfg, torch.device("cuda"))["pin_memory"] is True
    assert loader_options(cfg | {"pin_memory": False}, torch.device("cuda"))["pin_memory"] is False
    with_workers = make_loader([0, 1], 1, False, 2, 0, pin_memory=True, prefetch_factor=3)
    assert with_workers.pin_memory and with_workers.prefetch_factor == 3 and with_workers.persistent_workers
    # torch refuses a prefetch_factor without workers: it is left out there
    assert make_loader([0, 1], 1, False, 0, 0, prefetch_factor=3).prefetch_factor is None


def test_temperature_scaling_recovers_an_overconfident_model():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(size=(3000, 3)) * 1.5
    probs = np.exp(true_logits) / np.exp(true_logits).sum(1, keepdims=True)
    targets = np.array([rng.choice(3, p=p) for p in probs])
    weights = np.array([1.0, 1.0, 1.0])
    t = fit_temperature(true_logits * 3.0, targets, weights)
    assert abs(t - 3.0) < 0.3
    calibrated = weighted_log_loss(
        targets, np.exp(true_logits * 3 / t) / np.exp(true_logits * 3 / t).sum(1, keepdims=True), weights)
    raw = weighted_log_loss(targets, np.exp(true_logits * 3) / np.exp(true_logits * 3).sum(1, keepdims=True),
                            weights)
    assert calibrated < raw


def test_spinal_flip_reverses_slices_and_mirrors_only_axial_views():
    images = torch.arange(2 * 6 * 2 * 2, dtype=torch.float32).view(2, 6, 2, 2)
    flipped = flip_spinal(images, 2)
    assert torch.equal(flipped[:, 0], images[:, 2])           # sagittal: order reversed
    assert torch.equal(flipped[:, 3], images[:, 5].flip(-1))  # axial: also left-right
    assert torch.equal(flip_spinal(flipped, 2), images)


@pytest.fixture(scope="module")
def tiny_crops(tiny_dataset, tmp_path_factory):
    dataset, _ = tiny_dataset
    out = tmp_path_factory.mktemp("crops")
    index, _ = crops_from_annotations(dataset, out / "train.npy")
    index = index.with_columns(array=pl.lit(str(out / "train.npy")))
    labels = read_labels(dataset / "train.csv")
    return index, labels, out


def test_resumed_training_equals_uninterrupted(tiny_crops, tmp_path):
    index, labels, _ = tiny_crops
    samples = family_samples("spinal", index, label_targets(labels_to_long(labels)))[:16]
    cfg = TRAIN_CFG | {"epochs": 3, "hidden": 8}

    class Killed(Exception):
        pass

    def kill_at(epoch_to_die):
        def log_metrics(metrics, epoch):
            if epoch == epoch_to_die:
                raise Killed
        return log_metrics

    def run(checkpoint, log_metrics=None):
        torch.manual_seed(0)
        model = build_model("spinal", CROP_CFG, cfg)
        data = CROP_CFG | {"slice_jitter": 1, "point_jitter": 2}
        return fit(model, CropDataset(samples, data, train=True, seed=1),
                   CropDataset(samples, data, train=False), cfg, device=torch.device("cpu"), seed=1,
                   checkpoint=checkpoint, fingerprint="same", log_metrics=log_metrics)

    straight, history = run(tmp_path / "a.pt")
    # killed while logging the second epoch's figures (its checkpoint is written before
    # them): the resumed run trains only the third epoch
    with pytest.raises(Killed):
        run(tmp_path / "b.pt", kill_at(1))
    logged = []
    resumed, resumed_history = run(tmp_path / "b.pt", lambda metrics, epoch: logged.append(epoch))
    assert logged == [2]
    assert [h["epoch"] for h in resumed_history] == [0, 1, 2]
    assert resumed_history[-1]["train_loss"] == pytest.approx(history[-1]["train_loss"], rel=1e-5)
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6)


def test_next_epoch_starts_loading_before_validation(tiny_crops, tmp_path, monkeypatch):
    """While epoch e validates, the training loader already holds epoch e + 1's iterator,
    seeded for it (workers load its first batches meanwhile); after the last epoch none."""
    from spinepipe.classify import training

    index, labels, _ = tiny_crops
    samples = family_samples("spinal", index, label_targets(labels_to_long(labels)))[:8]
    cfg = TRAIN_CFG | {"epochs": 3, "hidden": 8, "num_workers": 1}
    data = CROP_CFG | {"slice_jitter": 1, "point_jitter": 2}
    train = CropDataset(samples, data, train=True, seed=1)
    seen = []
    real_predict = training.predict

    def predict(model, loader, device, amp=None):
        seen.append(train.rng.bit_generator.state["state"]["state"])
        return real_predict(model, loader, device, amp)

    monkeypatch.setattr(training, "predict", predict)
    fit(build_model("spinal", CROP_CFG, cfg), train, CropDataset(samples, data, train=False), cfg,
        device=torch.device("cpu"), seed=1, checkpoint=tmp_path / "c.pt", fingerprint="x")
    expected = [np.random.default_rng(1 + e).bit_generator.state["state"]["state"] for e in (1, 2, 2)]
    assert seen == expected


def test_tiny_model_learns_beyond_the_prior(tiny_crops, tmp_path):
    """Loss falls and, on the studies it trained on, the spinal model beats the label prior:
    the crops carry the pathology and the training loop can use it."""
    index, labels, _ = tiny_crops
    samples = family_samples("spinal", index, label_targets(labels_to_long(labels)))
    samples = [s for s in samples if s.usable and (s.target >= 0).all()]
    # the default CPU path: bfloat16 mixed precision on channels-last tensors
    cfg = TRAIN_CFG | {"epochs": 25, "lr": 3e-3, "hidden": 16, "batch_size": 10, "slice_jitter": 0,
                       "point_jitter": 0, "aux_weight": 0.0, "precision": "bf16", "channels_last": True}
    torch.manual_seed(0)
    data = CROP_CFG | {"slice_jitter": 0, "point_jitter": 0}
    model, history = fit(build_model("spinal", CROP_CFG, cfg), CropDataset(samples, data, train=True),
                         CropDataset(samples, data, train=False), cfg, device=torch.device("cpu"),
                         seed=0, checkpoint=tmp_path / "c.pt", fingerprint="x")
    assert history[-1]["train_loss"] < 0.6 * history[0]["train_loss"]
    assert all(p.dtype == torch.float32 and p.is_contiguous() for p in model.parameters())
    model.eval()
    with torch.no_grad():
        batch = [CropDataset(samples, data, train=False)[i] for i in range(len(samples))]
        logits = model(torch.stack([b["image"] for b in batch]), torch.stack([b["mask"] for b in batch]))["logits"]
    frame = predictions_frame(samples, logits.numpy(), "spinal", 0)
    probs = torch.from_numpy(frame.select("logit_normal_mild", "logit_moderate", "logit_severe")
                             .to_numpy()).softmax(-1).numpy()
    predictions = pl.DataFrame({"row_id": frame["row_id"], "normal_mild": probs[:, 0],
                                "moderate": probs[:, 1], "severe": probs[:, 2]})
    spinal_only = labels.with_columns([pl.lit(None, dtype=pl.String).alias(c) for c in LABEL_COLUMNS
                                       if not c.startswith("spinal")])
    model_score = score(spinal_only, predictions)["spinal"]
    prior_score = score(spinal_only, prior_predictions(labels, predictions["row_id"].to_list()))["spinal"]
    print(f"\ntiny spinal model {model_score:.3f} vs prior {prior_score:.3f} (training studies)")
    assert model_score < 0.7 * prior_score


def _sample_submission(studies: list[int]) -> pl.DataFrame:
    from spinepipe.constants import CONDITIONS
    rows = [f"{s}_{c}_{lv}" for s in studies for c in CONDITIONS for lv in LEVELS]
    return pl.DataFrame({"row_id": rows, "normal_mild": [1 / 3] * len(rows),
                         "moderate": [1 / 3] * len(rows), "severe": [1 / 3] * len(rows)})


def test_submission_falls_back_and_reports_every_degraded_row(tiny_crops):
    index, labels, _ = tiny_crops
    studies = sorted(index["study_id"].unique().to_list())[:2]
    index = index.filter(pl.col("study_id").is_in(studies)).with_columns(status=pl.lit("ok"))
    # study 0 lost its axial series (axial views missing) and its left sagittal T2 recess view
    lost = (pl.col("study_id") == studies[0]) & (pl.col("view").str.starts_with("axial")
                                                 | (pl.col("view") == "sag_t2_left"))
    index = index.with_columns(status=pl.when(lost).then(pl.lit("no_series")).otherwise(pl.col("status")))
    frames = []
    for family in ("spinal", "foraminal", "subarticular"):
        samples = family_samples(family, index)
        for fold in (0, 1):
            logits = np.random.default_rng(fold).normal(size=(len(samples), 1, 3))
            frames.append(predictions_frame(samples, logits, family, fold))
    predictions = pl.concat(frames)
    # a row whose model output is broken, and a study with no crops at all
    predictions = predictions.with_columns(
        logit_severe=pl.when(pl.col("row_id") == f"{studies[1]}_spinal_canal_stenosis_l1_l2")
        .then(float("nan")).otherwise(pl.col("logit_severe")))
    sample = _sample_submission([*studies, 123])
    ensembled = ensemble(predictions, {"spinal": 2.0}, None)
    submission, degraded = assemble_submission(sample, ensembled, prior_table(labels), index)
    validate_submission(submission, sample)
    reasons = dict(zip(degraded["row_id"], degraded["fallback"]))
    prior = prior_predictions(labels, sample["row_id"].to_list())
    for lv in LEVELS:
        assert reasons[f"{studies[0]}_left_subarticular_stenosis_{lv}"] == "prior"
        # the right recess is still graded, from its sagittal T2 view
        assert reasons[f"{studies[0]}_right_subarticular_stenosis_{lv}"] == "model (other series)"
        assert reasons[f"{studies[0]}_spinal_canal_stenosis_{lv}"] == "model (other series)"
        assert f"{studies[0]}_left_neural_foraminal_narrowing_{lv}" not in reasons
        assert reasons[f"123_spinal_canal_stenosis_{lv}"] == "prior"
    assert reasons[f"{studies[1]}_spinal_canal_stenosis_l1_l2"] == "prior"
    assert degraded.height == 5 * 2 + 25 + 1 + 5  # study 0 recesses + study 123 + nan row + study 0 canal
    fallback = submission.filter(pl.col("row_id") == "123_spinal_canal_stenosis_l1_l2")
    expected = prior.filter(pl.col("row_id") == "123_spinal_canal_stenosis_l1_l2")
    assert np.allclose(fallback.select("normal_mild", "moderate", "severe").to_numpy(),
                       expected.select("normal_mild", "moderate", "severe").to_numpy(), atol=1e-6)
    # the ensemble is the mean over folds of temperature-scaled probabilities
    row = f"{studies[1]}_left_neural_foraminal_narrowing_l3_l4"
    logits = predictions.filter(pl.col("row_id") == row).select("logit_normal_mild", "logit_moderate",
                                                                 "logit_severe").to_numpy()
    by_hand = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).mean(0)
    got = submission.filter(pl.col("row_id") == row).select("normal_mild", "moderate", "severe").to_numpy()[0]
    assert np.allclose(got, by_hand, atol=1e-6)


def test_validate_submission_rejects_bad_rows():
    sample = _sample_submission([1])
    validate_submission(sample, sample)
    with pytest.raises(ValueError, match="order"):
        validate_submission(sample.reverse(), sample)
    with pytest.raises(ValueError, match="sum to 1"):
        validate_submission(sample.with_columns(severe=pl.lit(0.9)), sample)


def _graded(rows: list[tuple[int, str, int]]) -> pl.DataFrame:
    """Logit rows of predict_test's format: (study, family, grading model's fold) each."""
    conditions = {"spinal": "spinal_canal_stenosis", "foraminal": "left_neural_foraminal_narrowing",
                  "subarticular": "left_subarticular_stenosis"}
    frames = [pl.DataFrame({"row_id": [f"{study}_{conditions[family]}_{lv}" for lv in LEVELS],
                            "study_id": study, "level": list(LEVELS), "condition": conditions[family],
                            "family": family, "fold": fold, "views_ok": 1, "views": 1,
                            "logit_normal_mild": 0.0, "logit_moderate": 0.0, "logit_severe": 0.0})
              for study, family, fold in rows]
    return pl.concat(frames).cast(PREDICTION_SCHEMA).select(list(PREDICTION_SCHEMA))


def test_check_no_leak_refuses_a_model_that_saw_the_study():
    folds = pl.DataFrame({"study_id": [1, 2, 3, 4], "fold": [0, 0, 1, 1]})
    held_out = [(1, "spinal", 0), (2, "spinal", 0), (3, "spinal", 1), (4, "spinal", 1),
                (3, "foraminal", 1)]
    check_no_leak(_graded(held_out), folds)
    check_no_leak(_graded(held_out), folds, {("spinal", 0): [3, 4], ("spinal", 1): [1, 2]})
    with pytest.raises(LeakError, match="trained on their study"):  # fold 0's model trained on 3
        check_no_leak(_graded([*held_out[:2], (3, "spinal", 0)]), folds)
    with pytest.raises(LeakError, match="more than once"):  # an ensemble of folds is no OOF row
        check_no_leak(_graded([*held_out, (1, "spinal", 0)]), folds)
    with pytest.raises(LeakError, match="no fold holds out"):
        check_no_leak(_graded([(9, "spinal", 0)]), folds)
    with pytest.raises(LeakError, match="trained on 1 of the studies"):  # what the model file says
        check_no_leak(_graded(held_out), folds, {("spinal", 0): [2, 3, 4]})
    renamed = _graded(held_out[:1]).with_columns(study_id=pl.lit(2, dtype=pl.Int64))
    with pytest.raises(LeakError, match="names another study"):
        check_no_leak(renamed, folds)


def test_end_to_end_oof_grades_every_train_row_as_the_submission_would(tiny_crops, tmp_path):
    index, labels, _ = tiny_crops
    folds = make_folds(labels, 2, 0)
    studies = sorted(labels["study_id"].to_list())
    fold_of = dict(folds.select("study_id", "fold").iter_rows())
    # one study lost its axial series and its left sagittal T2 recess view; another has no crops
    no_axial, absent = studies[0], studies[1]
    lost = (pl.col("study_id") == no_axial) & (pl.col("view").str.starts_with("axial")
                                               | (pl.col("view") == "sag_t2_left"))
    index = index.with_columns(status=pl.when(lost).then(pl.lit("no_series")).otherwise(pl.col("status")))
    index = index.filter(pl.col("study_id") != absent)
    rng = np.random.default_rng(0)
    frames = []
    for family in ("spinal", "foraminal", "subarticular"):
        for fold in (0, 1):
            held_out = index.filter(pl.col("study_id").is_in(held_out_studies(folds, fold)))
            samples = family_samples(family, held_out)
            frames.append(predictions_frame(samples, rng.normal(size=(len(samples), 1, 3)), family, fold))
    logits = pl.concat(frames)
    probs, degraded = end_to_end_predictions(logits, folds, labels, {"spinal": 2.0}, index)
    assert probs["row_id"].to_list() == labels_to_long(labels)["row_id"].to_list()
    assert probs["fold"].to_list() == [fold_of[int(r.split("_")[0])] for r in probs["row_id"]]
    fallback = dict(zip(degraded["row_id"], degraded["fallback"]))
    for lv in LEVELS:
        assert fallback[f"{no_axial}_left_subarticular_stenosis_{lv}"] == "prior"
        assert fallback[f"{no_axial}_right_subarticular_stenosis_{lv}"] == "model (other series)"
        assert fallback[f"{no_axial}_spinal_canal_stenosis_{lv}"] == "model (other series)"
    assert sum(r.startswith(f"{absent}_") and f == "prior" for r, f in fallback.items()) == 25
    # the prior of a held-out row comes from the other folds' labels only
    row = f"{absent}_spinal_canal_stenosis_l4_l5"
    others = labels.filter(pl.col("study_id").is_in(held_out_studies(folds, 1 - fold_of[absent])))
    expected = prior_predictions(others, [row]).select("normal_mild", "moderate", "severe").to_numpy()
    got = probs.filter(pl.col("row_id") == row).select("normal_mild", "moderate", "severe").to_numpy()
    assert np.allclose(got, expected, atol=1e-6)
    # a model row is its one held-out model's temperature-scaled softmax
    row = f"{studies[2]}_spinal_canal_stenosis_l3_l4"
    z = logits.filter(pl.col("row_id") == row).select(LOGITS).to_numpy()[0] / 2.0
    got = probs.filter(pl.col("row_id") == row).select("normal_mild", "moderate", "severe").to_numpy()[0]
    assert np.allclose(got, np.exp(z) / np.exp(z).sum(), atol=1e-6)
    # a row graded by the fold that trained on it is refused
    with pytest.raises(LeakError):
        end_to_end_predictions(logits.with_columns(fold=1 - pl.col("fold")), folds, labels, {}, index)
    # cv.json: both CVs, each with its terms, per condition and per level
    result, temperatures, _, _ = evaluate_cv(logits, logits, labels, folds, index, None, None,
                                             np.array([1.0, 2.0, 4.0]), True, tmp_path)
    for suffix in ("", "_annotated_points"):
        assert np.isfinite(result[f"cv_score{suffix}"])
        assert set(result[f"cv_terms{suffix}"]) == {"spinal", "foraminal", "subarticular",
                                                    "any_severe_spinal"}
        assert result[f"per_condition{suffix}"] and result[f"per_level{suffix}"]
    on_prior = sum(f == "prior" for f in fallback.values())
    assert result["end_to_end"]["rows_on_prior"] == on_prior >= 25 + 5
    assert result["n_rows"] == 25 * len(studies) and set(temperatures) == {"spinal", "foraminal",
                                                                          "subarticular"}
    # the reliability diagram draws a curve per severity (matplotlib's first three colours)
    import matplotlib.image

    pixels = np.round(matplotlib.image.imread(tmp_path / "calibration.png")[..., :3] * 255)
    for colour in ((31, 119, 180), (255, 127, 14), (44, 160, 44)):
        drawn = int((np.abs(pixels - colour).max(axis=-1) <= 8).sum())
        assert drawn > 30, (colour, drawn)


def _twin_samples(tmp_path, n=4):
    """Samples whose annotated crops hold 1.0 and whose predicted-point twins hold 2.0."""
    from spinepipe.classify.data import Sample, attach_predicted

    shape = (n, 5, CROP_CFG["size"] + 2 * CROP_CFG["margin"], CROP_CFG["size"] + 2 * CROP_CFG["margin"])
    paths = {}
    for name, value in (("annotated", 1.0), ("predicted", 2.0)):
        paths[name] = str(tmp_path / f"{name}.npy")
        np.save(paths[name], np.full(shape, value, dtype=np.float16))

    def make(name, i, status="ok"):
        return Sample(i, LEVELS[0], "left", [f"{i}_x_l1_l2"], [(paths[name], i)], [[True] * 5], [status],
                      np.array([0]))

    samples = [make("annotated", i) for i in range(n)]
    # the last twin has no usable view: its sample keeps the annotated crop
    twins = [make("predicted", i, "ok" if i < n - 1 else "missing_series") for i in range(n)]
    assert attach_predicted(samples, twins) == n - 1
    return samples


def test_training_draws_the_predicted_point_twin_at_the_configured_share(tmp_path):
    samples = _twin_samples(tmp_path)
    data = CROP_CFG | {"slice_jitter": 0, "point_jitter": 0}

    def values(share, train=True, rounds=50):
        dataset = CropDataset(samples, data | {"predicted_point_share": share}, train=train, seed=3)
        return np.array([[float(dataset[i]["image"].mean()) for i in range(len(samples))]
                         for _ in range(rounds)])

    assert (values(0.0) == 1.0).all()
    always = values(1.0)
    assert (always[:, :-1] == 2.0).all() and (always[:, -1] == 1.0).all()
    assert (values(1.0, train=False) == 1.0).all()  # validation and prediction: annotated only
    half = values(0.5)[:, :-1]
    assert 0.35 < (half == 2.0).mean() < 0.65


def test_view_dropout_masks_one_cut_view_and_never_a_lone_one(tmp_path):
    from spinepipe.classify.data import Sample

    side = CROP_CFG["size"] + 2 * CROP_CFG["margin"]
    path = str(tmp_path / "crops.npy")
    np.save(path, np.stack([np.full((5, side, side), v, dtype=np.float16) for v in (1.0, 2.0)]))
    both = Sample(1, LEVELS[0], "left", ["1_x_l1_l2"], [(path, 0), (path, 1)],
                  [[True] * 5, [True] * 5], ["ok", "ok"], np.array([0]))
    lone = Sample(2, LEVELS[0], "left", ["2_x_l1_l2"], [(path, 0), (path, 1)],
                  [[True] * 5, [False] * 5], ["ok", "no_series"], np.array([0]))
    data = CROP_CFG | {"slice_jitter": 0, "point_jitter": 0}

    def draws(dropout, sample, train=True, rounds=200):
        dataset = CropDataset([sample], data | {"view_dropout": dropout}, train=train, seed=5)
        items = [dataset[0] for _ in range(rounds)]
        return (np.array([[float(it["image"][k * 3:(k + 1) * 3].abs().sum() > 0) for k in (0, 1)]
                          for it in items]),
                np.array([it["mask"].view(2, 3).any(1).numpy() for it in items]))

    shown, masks = draws(0.0, both)
    assert shown.all() and masks.all()
    shown, masks = draws(0.5, both)
    dropped = ~masks.all(1)
    assert 0.35 < dropped.mean() < 0.65
    assert (masks.sum(1) >= 1).all()                    # never both views
    assert (shown == masks).all()                       # a masked view is blank too
    assert masks[dropped, 0].any() and masks[dropped, 1].any()  # either view can go
    shown, masks = draws(1.0, lone)                     # its only cut view always stays
    assert (masks[:, 0]).all() and not masks[:, 1].any()
    shown, masks = draws(1.0, both, train=False)        # validation and prediction see all
    assert masks.all()


def test_auto_jitter_follows_the_measured_localization_error():
    from spinepipe.classify.jitter import resolve_jitter

    errors = {"spinal": {"axis_mm": {"q80": 2.0}, "axis_share": {"q80": 0.01}, "slice": {"q80": 0.6}},
              "subarticular": {"axis_mm": {"q80": 4.0}, "axis_share": {"q80": 0.03}, "slice": {"q80": 1.4}},
              "foraminal": {"axis_mm": None, "axis_share": None, "slice": None}}
    auto = {"point_jitter": "auto", "slice_jitter": "auto", "jitter_quantile": 0.8}
    wide = CROP_CFG | {"margin": 8, "extra_slices": 2}
    # spinal: the sagittal view moves 2 mm = 0.9 crop px (56 mm over 24 px), the axial canal
    # view (centred on the recess points) 4 mm = 1.5 px (64 mm): the larger wins
    assert resolve_jitter("spinal", auto, wide, errors) == {"point_jitter": 2, "slice_jitter": 1}
    assert resolve_jitter("subarticular", auto, wide, errors) == {"point_jitter": 2, "slice_jitter": 1}
    # never beyond what the cache holds
    assert resolve_jitter("spinal", auto, CROP_CFG | {"margin": 1}, errors)["point_jitter"] == 1
    # ratio crops: the error as a share of the image, over the window's share
    ratio = wide | {"mode": "ratio"}
    assert resolve_jitter("subarticular", auto, ratio, errors)["point_jitter"] == round(0.03 * 24 / 0.27)
    # nothing measured: no jitter (and a warning), fixed numbers pass through
    assert resolve_jitter("foraminal", auto, wide, errors) == {"point_jitter": 0, "slice_jitter": 0}
    assert resolve_jitter("foraminal", {"point_jitter": 3, "slice_jitter": 1, "jitter_quantile": 0.8}, wide, {}) == {
        "point_jitter": 3, "slice_jitter": 1}


def test_spinal_flip_stays_on_the_images_device():
    """The TTA flip builds its axial-view mask where the images are: on a GPU it once mixed a
    CPU mask with CUDA images and every spinal prediction job failed. The meta device stands
    in for the GPU here (same device check, no GPU needed)."""
    images = torch.zeros(2, 6, 8, 8, device="meta")
    assert flip_spinal(images, 2).device.type == "meta"


def test_resume_fingerprint_follows_the_crop_data(tmp_path):
    """A killed training job resumes only on the same data: new crop rows, labels or a
    rewritten crop array give another digest (and so a fresh start)."""
    import os

    from spinepipe.classify.pipeline import _data_digest

    array = tmp_path / "shard0.npy"
    np.save(array, np.zeros((2, 3), dtype=np.float32))
    index = pl.DataFrame({"row": [0, 1], "study_id": [1, 2], "array": [str(array)] * 2})
    labels = pl.DataFrame({"study_id": [1, 2], "spinal_canal_stenosis_l1_l2": ["Normal/Mild"] * 2})
    base = _data_digest(index, None, labels)
    assert _data_digest(index, None, labels) == base
    assert _data_digest(index.with_columns(row=pl.Series([1, 0])), None, labels) != base
    assert _data_digest(index, None, labels.with_columns(study_id=pl.Series([1, 3]))) != base
    assert _data_digest(index, index, labels) != base
    stat = array.stat()
    os.utime(array, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # crops cut again
    assert _data_digest(index, None, labels) != base


def test_each_family_trains_with_its_own_view_dropout(monkeypatch):
    """train.view_dropout as one share per family: the spinal job's training dataset draws
    with the spinal share (validation never drops); a plain number is every family's."""
    import contextlib

    from conftest import make_config

    from spinepipe.classify import pipeline

    shares = {"spinal": 0.0, "foraminal": 0.3, "subarticular": 0.6}
    cfg = make_config()["train"] | TRAIN_CFG | {"predicted_point_share": 0.5, "view_dropout": shares}
    jitter = {"point_jitter": 2, "slice_jitter": 1}
    for family, share in shares.items():
        settings = pipeline.dataset_settings(family, CROP_CFG, jitter, cfg)
        assert settings == CROP_CFG | jitter | {"predicted_point_share": 0.5, "view_dropout": share}
    assert pipeline.dataset_settings("all", CROP_CFG, jitter, cfg)["view_dropout"] == 0.6
    assert pipeline.dataset_settings("spinal", CROP_CFG, jitter, cfg | {"view_dropout": 0.2})["view_dropout"] == 0.2

    # and what train_fold hands its datasets (the training faked: it stops at fit)
    class Stop(Exception):
        pass

    datasets = []

    def fit(model, train, val, *args, **kwargs):
        datasets.extend([train, val])
        raise Stop

    @contextlib.contextmanager
    def run(tracking, name, params, **kwargs):
        assert params["resolved_view_dropout"] == 0.1
        yield lambda metrics, step: None

    monkeypatch.setattr(pipeline, "mlflow_run", run)
    monkeypatch.setattr(pipeline, "family_samples", lambda *a, **k: [])
    monkeypatch.setattr(pipeline, "fit", fit)
    labels = pl.DataFrame({"study_id": [1], **{c: ["Normal/Mild"] for c in LABEL_COLUMNS}})
    with pytest.raises(Stop):
        pipeline.train_fold("spinal", 0, index=pl.DataFrame({"study_id": [], "array": []}), labels=labels,
                            folds=pl.DataFrame({"study_id": [1], "fold": [0]}), crop_cfg=CROP_CFG,
                            cfg=cfg | {"view_dropout": {**shares, "spinal": 0.1}, "hidden": 8},
                            seed=0, tracking={}, parent_run_id=None, out_model=Path("unused.pt"),
                            out_predictions=Path("unused.parquet"), checkpoint=Path("unused.pt"),
                            threads=torch.get_num_threads())
    train, val = datasets
    assert train.view_dropout == 0.1 and val.view_dropout == 0.0
