"""The synthetic pathology is learnable: a simple model beats the prior on held-out studies."""

from __future__ import annotations

import logging

import pytest
from conftest import WORKERS, make_config

from spinepipe.synth.generate import generate_dataset
from spinepipe.synth.learnability import learnability_check

log = logging.getLogger(__name__)


@pytest.mark.slow
def test_simple_model_beats_the_prior_on_held_out_studies(tmp_path):
    config = make_config({"synthetic": {
        "n_train": 36, "n_test": 16,
        "sagittal": {"matrix": [96]}, "axial": {"matrix": [96]}}})
    generate_dataset(config, tmp_path / "synthetic", workers=WORKERS)
    result = learnability_check(tmp_path / "synthetic")
    print(f"\nsimple model {result['model_score']:.4f} vs prior {result['prior_score']:.4f}, floor "
          f"{result['floor_score']:.4f} (competition metric, held-out synthetic test studies)")
    assert result["test_rows"] > 300
    assert result["model_score"] < 0.7 * result["prior_score"]
    # the reader's noise leaves a floor: above 0, below the simple model
    assert 0.1 < result["floor_score"] < result["model_score"]
    assert 0.3 < result["gap_closed"] < 1
    for family in ("spinal", "foraminal", "subarticular"):
        assert result["model"][family] < result["prior"][family], family
