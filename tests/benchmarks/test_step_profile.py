"""The step profile's sorting of profiler rows into matmuls, compiled kernels, optimizer."""

from tests.benchmarks import load_benchmark

profile = load_benchmark("step_profile")


def test_rows_fall_in_their_kind() -> None:
    assert profile.category("aten::mm") == profile.category("aten::addmm") == "matmul"
    assert profile.category("graph_1_cpp_fused_add_index_add_silu_3") == "compiled kernels"
    assert profile.category("Optimizer.step#AdamW.step") == "optimizer"
    assert profile.category("aten::lerp_") == "optimizer"
    # an elementwise op outside a compiled graph is not a matmul, whatever it multiplies
    assert profile.category("aten::mul") == profile.category("aten::copy_") == "other"
