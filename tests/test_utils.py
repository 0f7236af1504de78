"""Tests of scripts.utils: config flags from command lines, the bf16 decision, data-parallel unwrapping."""

from __future__ import annotations

import pytest
import torch

from scripts.utils import as_bool, bf16_is_fast, distributed_rank, resolve_flag, unwrap_module


@pytest.mark.parametrize("text, value", [("true", True), (" Yes", True), ("ON", True), ("1", True), ("false", False),
                                         ("no", False), ("off", False), ("0", False), ("none", False), ("", False)])
def test_command_line_strings(text, value):
    assert as_bool(text) is value


def test_non_strings_and_unknown_words():
    assert as_bool(1) is True and as_bool(0) is False and as_bool(None) is False
    with pytest.raises(ValueError, match="expected true or false, got 'maybe'"):
        as_bool("maybe")


def test_auto_follows_bf16_support_and_other_values_are_flags():
    assert resolve_flag("auto", "cpu") is bf16_is_fast("cpu")
    assert resolve_flag("AUTO", torch.device("cpu")) is bf16_is_fast("cpu")
    assert resolve_flag("false", "cpu") is False and resolve_flag(True, "cpu") is True
    with pytest.raises(ValueError, match="true, false or 'auto'"):
        resolve_flag("sometimes", "cpu")
    assert bf16_is_fast("meta") is False  # neither CPU nor CUDA


def test_unwrap_and_rank_outside_distributed_runs():
    net = torch.nn.Linear(2, 2)
    assert unwrap_module(torch.nn.DataParallel(net)) is net and unwrap_module(net) is net
    assert distributed_rank() == 0
