"""Which localizers a run trains, for how many epochs, and on which samples per epoch."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from conftest import REPO, make_config

from spinepipe.config import ConfigError, deep_update, validate
from spinepipe.localize.samples import PointSample
from spinepipe.localize.settings import point_epochs, trained_models
from spinepipe.localize.training import epoch_draw


def _samples(groups: list[int]) -> list[PointSample]:
    return [PointSample(0, lambda: np.zeros((4, 4), np.float32), np.zeros((5, 2)), np.ones(5, bool), 1.0,
                        meta={"offset": i}, group=g) for i, g in enumerate(groups)]


def test_random_sampling_trains_one_slice_of_each_annotated_slice_per_epoch():
    # three annotated slices with their neighbours, one without neighbours (edge of the stack)
    groups = [0, 0, 0, 3, 3, 3, 6, 6, 6, 9]
    samples = _samples(groups)
    rng = np.random.default_rng(0)
    seen = Counter()
    for _ in range(60):
        order = epoch_draw(samples, "random", rng)
        assert sorted(groups[i] for i in order) == [0, 3, 6, 9]  # each group exactly once
        seen.update(order.tolist())
    # every neighbour is drawn in turn (about 20 times each in 60 epochs), not always the same one
    assert all(seen[i] >= 8 for i in range(9)) and seen[9] == 60
    assert sorted(epoch_draw(samples, "all", rng).tolist()) == list(range(10))


def test_slice_models_are_trained_only_where_a_slice_method_uses_them():
    localize = make_config()["localize"]
    assert localize["compare_slice_methods"] is False
    assert trained_models(localize) == [("point", "sagittal_t2"), ("point", "sagittal_t1"), ("point", "axial_t2")]
    one_learned = localize | {"slice_method": {"sagittal_t2": "learned", "sagittal_t1": "geometric",
                                               "axial_t2": "geometric"}}
    assert ("slice", "sagittal_t2") in trained_models(one_learned)
    assert len(trained_models(one_learned)) == 4
    assert len(trained_models(localize | {"slice_method": "learned"})) == 6
    assert len(trained_models(localize | {"compare_slice_methods": True})) == 6


def test_point_epochs_per_series_type_or_one_for_all():
    per_type = {"sagittal_t2": 30, "sagittal_t1": 15, "axial_t2": 10}
    config = deep_update(make_config(), {"localize": {"point_model": {"epochs": per_type}}})
    validate(config, REPO)
    assert {task: point_epochs(config["localize"], task) for task in per_type} == per_type
    one_for_all = make_config()["localize"]  # the tests' tiny config: one number
    assert point_epochs(one_for_all, "axial_t2") == one_for_all["point_model"]["epochs"]
    incomplete = make_config()
    incomplete["localize"]["point_model"]["epochs"] = {"sagittal_t2": 3, "sagittal_t1": 3}
    with pytest.raises(ConfigError, match="localize.point_model.epochs"):
        validate(incomplete, REPO)
