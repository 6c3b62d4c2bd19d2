"""tools.coord_check: µP keeps sub-layer activation scales width-independent after a few AdamW steps, SP does not;
the outputs are written and never silently replaced."""

import json
import pathlib

import pytest

from tools import coord_check

# Slow tier: two widths, two steps, the synthetic stream (no tokenising); three widths, two seeds, Hamlet. CI runs
# the command-line checks only.
QUICK = coord_check.Settings(widths=(64, 128), steps=2, ffn_kinds=("dense",), data="synthetic")
WIDE = coord_check.Settings(widths=(64, 128, 256), steps=2, ffn_kinds=("dense",), seeds=2)


@pytest.fixture(scope="module")
def results():
    return coord_check.run_coord_check(QUICK, log=lambda line: None)


def check_scales(results, settings, sp_growth):
    layers = results["summary"]["layers"]["dense"]
    for kind in coord_check.HIDDEN_TYPES:
        mup, sp = layers["mup"][kind], layers["sp"][kind]
        assert mup["ratio"] <= coord_check.TOLERANCE, (kind, mup["last"])
        if kind in ("gdn", "ffn"):
            assert sp["ratio"] > 1.5 * mup["ratio"], (kind, sp["last"], mup["last"])
            widest, narrowest = sp["last"][str(settings.widths[-1])], sp["last"][str(settings.widths[0])]
            assert widest > sp_growth * narrowest, (kind, sp["last"])  # grows with width, not just spread
    assert results["summary"]["mup_pass"]
    for by_width in results["train_ce"]["dense"].values():
        assert all(loss[-1] < loss[0] for loss in by_width.values())


@pytest.mark.slowtier  # ~80 s: CI checks µP's rules directly (tests/train/test_optimizers.py)
def test_mup_scales_stay_within_tolerance_and_sp_grows(results):
    check_scales(results, QUICK, sp_growth=1.5)


@pytest.mark.slowtier
def test_mup_scales_stay_within_tolerance_and_sp_grows_over_three_widths():
    check_scales(coord_check.run_coord_check(WIDE, log=lambda line: None), WIDE, sp_growth=2.0)


@pytest.mark.slowtier
def test_outputs_written_and_not_overwritten(results, tmp_path, capsys):
    out = str(tmp_path / "sub" / "coord")
    md, js, png = map(pathlib.Path, coord_check.write_outputs(results, out))
    table = md.read_text(encoding="utf-8")
    assert "| dense | mup | gdn |" in table and "max/min step 2" in table
    data = json.loads(js.read_text(encoding="utf-8"))
    assert set(data["scales"]["dense"]["sp"]) == set(coord_check.LAYER_TYPES)
    assert all(len(v) == QUICK.steps + 1 for v in data["scales"]["dense"]["mup"]["ffn"].values())
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # An existing output is refused before any work, with one error line and status 2.
    assert coord_check.main(["--widths", "64,128", "--out", out]) == 2
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "words"), [
    (["--widths", "64"], "at least two distinct widths"),
    (["--widths", "64,80"], "multiple of 32"),
    (["--ffn", "dense,mlp"], "choose from"),
    (["--steps", "0"], "--steps=0"),
    (["--lr", "-1"], "--lr"),
])
def test_bad_flags_end_with_one_error_line(argv, words, tmp_path, capsys):
    assert coord_check.main([*argv, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and words in err and err.count("\n") == 1
