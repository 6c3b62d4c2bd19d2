"""``tools.bench_train``'s ceiling line: the bound it prints follows from the measured rates and the step's FLOPs."""

from tools.bench_train import BATCH, SEQ, ceiling_report, summarize


def test_ceiling_report_bounds_tokens_per_second_by_the_best_matmul_rate() -> None:
    ours = summarize({"times": [2.0, 2.0, 2.0], "cpu_times": [4.0] * 3, "gflop": 100.0})
    ours.update(config="dense", implementation="ours (chunked)")
    torch = summarize({"times": [2.048, 2.048, 2.048], "cpu_times": [4.0] * 3, "gflop": 130.0})
    torch.update(config="dense", implementation="transformers")
    assert ours["gflop_per_s"] == 50.0

    report = ceiling_report({"2048x256x768": 80.0, "2048x768x256": 125.0}, [torch, ours])

    bound = BATCH * SEQ * 125.0 / 100.0  # 2,560 tokens/s: 100 GFLOP at the best rate, 125 GFLOP/s
    assert f"at most {bound:,.0f} tokens/s = {bound / 1000.0:.2f}x transformers" in report
    assert "measured 40% of it" in report  # 50 of 125 GFLOP/s
    assert "transformers:" not in report  # the peer gets no bound of ours


def test_bench_gdn_finds_a_bare_interpreter_name_on_path():
    """``--ref-python python3`` was joined to the repository path (``<repo>/python3``), so the torch peers silently
    did not run; a bare name is looked up on PATH, a relative path from the repository root."""
    import shutil

    from tools import bench_gdn

    assert bench_gdn.resolve_interpreter("python3") == shutil.which("python3")
    assert bench_gdn.resolve_interpreter(".venv-ref/bin/python") == str(bench_gdn.REPO / ".venv-ref/bin/python")
    assert bench_gdn.resolve_interpreter("/usr/bin/env") == "/usr/bin/env"
