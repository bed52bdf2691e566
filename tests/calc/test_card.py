"""The model card: what a model file says of itself, read back from its own dictionary."""

from __future__ import annotations

import copy

import torch

from matscale.calc.card import model_card
from matscale.pretrained import path


def _blob() -> dict:
    return torch.load(path("matscale-foundation-v1"), map_location="cpu", weights_only=True)


def test_a_run_annealed_over_its_time_budget_says_so_not_a_planned_step_count() -> None:
    blob = _blob()
    train = blob["run_config"]["train"]
    assert train["schedule"] == "cosine-time"
    card = model_card(blob)
    assert f"annealed over {train['max_minutes']} min, at most {train['steps']}" in card
    assert "planned" not in card
    fixed = copy.deepcopy(blob)
    fixed["run_config"]["train"]["schedule"] = "cosine"
    assert f"| steps | {fixed['step']} (planned {train['steps']}) |" in model_card(fixed)


def test_the_card_says_how_many_structures_each_error_averages_over() -> None:
    # validation and test of 7-8 structures read like figures; the sizes are now saved
    blob = _blob()
    assert "Structures behind each column" not in model_card(blob)  # saved before: no guess
    sized = {**blob, "split_structures": {"train": 900, "val": 8, "test": 7, "holdout": 0}}
    assert "validation 8, test 7, held out 0 (training 900)" in model_card(sized)
