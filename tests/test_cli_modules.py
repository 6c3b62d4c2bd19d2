"""Every command-line module can be imported next to the others in one process (absl flags are defined only when a
module runs as a program, so importing two of them never raises DuplicateFlagError)."""

import importlib

import pytest

MODULES = ["experiments.train", "experiments.eval", "experiments.sweep", "experiments.generate",
           "experiments.caption_rank", "tools.aot_compile", "tools.convert_hf", "tools.param_count"]


@pytest.mark.parametrize("name", MODULES)
def test_command_modules_import_together(name):
    for other in MODULES:
        importlib.import_module(other)
    assert importlib.import_module(name).main
