"""The fused int8 linear op must be the Python forward to the last bit, and its absence must cost speed only."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from models import int8_kernel
from models.sentiment import RowInt8Linear, unfuse_linears

needs_compiler = pytest.mark.skipif(shutil.which("g++") is None, reason="no C++ compiler: the op cannot be built")


@needs_compiler
def test_the_op_builds_and_loads_where_a_compiler_exists() -> None:
    assert int8_kernel.fused_linear_available()
    assert int8_kernel.library_path().is_file()


@needs_compiler
@pytest.mark.parametrize(("k", "n", "bias"), [(384, 384, True), (384, 1536, True), (1536, 384, False), (5, 3, True)])
@pytest.mark.parametrize("rows", [1, 7, 130])
def test_fused_forward_equals_the_torch_ops_to_the_last_bit(k: int, n: int, bias: bool, rows: int) -> None:
    assert int8_kernel.fused_linear_available()
    torch.manual_seed(rows * 1000 + k)
    linear = RowInt8Linear(torch.nn.Linear(k, n, bias=bias))
    x = torch.randn(2, rows, k) * torch.rand(2, rows, 1) * 5  # rows of different magnitudes
    # exact ties at quantization (v.5 of a step) must round half to even as torch.round does
    x[0, 0, :5] = torch.tensor([0.5, 1.5, 2.5, -0.5, -2.5]) * (x[0, 0].abs().max() / 127)
    x[1, 0] = 0.0  # an all-zero row: the scale's floor
    with torch.inference_mode():
        fused, reference = linear(x), linear.unfused(x)
    assert fused.shape == (2, rows, n)
    assert torch.equal(fused, reference)


def test_a_failed_build_says_why(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="false failed"):
        int8_kernel.build(tmp_path / "op.so", compiler="false")  # a "compiler" that fails
    assert not (tmp_path / "op.so").exists()  # nothing half-written where a loader would find it


def test_a_changed_source_gets_its_own_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = int8_kernel.library_path()
    changed = tmp_path / "row_int8_linear.cpp"
    changed.write_text(int8_kernel.SOURCE.read_text() + "// changed\n")
    monkeypatch.setattr(int8_kernel, "SOURCE", changed)
    assert int8_kernel.library_path() != before  # a stale build is never loaded for a new source
    assert int8_kernel.library_path().parent == before.parent


@needs_compiler
def test_mismatched_shapes_are_refused_with_a_reason() -> None:
    assert int8_kernel.fused_linear_available()
    linear = RowInt8Linear(torch.nn.Linear(8, 4))
    with pytest.raises(RuntimeError, match="x has 6 features"):
        torch.ops.streamsense.row_int8_linear(torch.randn(2, 6), linear.weight_t, linear.weight_scale, linear.bias)
    with pytest.raises(RuntimeError, match="bias must hold 4"):
        torch.ops.streamsense.row_int8_linear(torch.randn(2, 8), linear.weight_t, linear.weight_scale, torch.ones(3))


def test_unfused_linears_give_the_same_outputs() -> None:
    torch.manual_seed(1)
    first, second = RowInt8Linear(torch.nn.Linear(16, 32)), RowInt8Linear(torch.nn.Linear(32, 4))
    model = torch.nn.Sequential(first, torch.nn.GELU(), second)
    x = torch.randn(5, 16)
    with torch.inference_mode():
        before = model(x)
        assert unfuse_linears(model) is model
        assert not any(m.fused for m in model.modules() if isinstance(m, RowInt8Linear))
        assert torch.equal(model(x), before)
