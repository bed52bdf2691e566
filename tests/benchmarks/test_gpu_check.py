"""The GPU check runs end to end on the CPU (the same code path) and finds the largest width
by doubling and bisection."""

import sys

import torch

from tests.benchmarks import load_benchmark

check = load_benchmark("gpu_check")


def test_it_runs_on_the_cpu_and_finds_the_largest_width(monkeypatch) -> None:
    real = check.EGNN

    def egnn(cfg):  # a device that holds widths up to 40
        if cfg.width > 40:
            raise torch.OutOfMemoryError("out of memory (stand-in)")
        return real(cfg)

    monkeypatch.setattr(check, "EGNN", egnn)
    written = {}
    monkeypatch.setattr(check, "write_json", lambda name, payload: written.update(payload))
    args = ["gpu_check.py", "--device", "cpu", "--widths", "8", "--repeats", "1",
            "--largest-start", "8", "--peak-size", "256", "--budget-s", "120"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", args)
    check.main()
    assert written["device"] == "cpu" and set(written["matmul_peak_tflops"]) == {"fp32", "bf16"}
    assert {r["precision"] for r in written["steps"]} == {"fp32", "bf16"}
    assert all(0 < r["mfu"] < 1 and r["planned_GiB"] > 0 for r in written["steps"])
    for r in written["largest"]:  # 8, 16, 32 fit, 64 does not, then 48 does not: 32
        assert r["largest_width"] == 32 and r["tried"] == {8: "fits", 16: "fits", 32: "fits",
                                                           64: "oom", 48: "oom"}  # fmt: skip
