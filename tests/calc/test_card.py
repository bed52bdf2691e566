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
    plan = f"learning rate decayed over {train['max_minutes']} min or {train['steps']} steps"
    assert plan in card and "planned" not in card and "stopped after" not in card
    # a run that stopped before its budget and its step cap (an interrupted run exported)
    # did not anneal: the card said "annealed" of a run still warming up
    early = {**blob, "train_seconds": 6.0}
    assert "; it stopped after 0.1 min, before either" in model_card(early)
    fixed = copy.deepcopy(blob)
    fixed["run_config"]["train"]["schedule"] = "cosine"
    assert f"| steps | {fixed['step']} (planned {train['steps']}) |" in model_card(fixed)


def test_the_card_says_how_many_structures_each_error_averages_over() -> None:
    # validation and test of 7-8 structures read like figures; the sizes are now saved
    blob = _blob()
    assert "Structures behind each column" not in model_card(blob)  # saved before: no guess
    sized = {**blob, "split_structures": {"train": 900, "val": 8, "test": 7, "holdout": 0}}
    assert "validation 8, test 7, held out 0 (training 900)" in model_card(sized)


def test_a_fine_tuned_cards_untouched_heads_are_not_said_to_be_kept_unless_frozen() -> None:
    """Without --freeze-backbone the card said a head without new data "kept what it had
    learnt"; the backbone it reads was tuned (its energy error went from 8 to 57 meV/atom)."""
    blob = copy.deepcopy(_blob())
    blob["run_config"]["train"]["init_from"] = "matscale-foundation-v1"
    blob["run_config"]["train"]["freeze"] = "none"
    assert "the backbone it reads was tuned on this data" in model_card(blob)
    blob["run_config"]["train"]["freeze"] = "backbone"
    assert "kept what it had learnt: the backbone was frozen" in model_card(blob)
