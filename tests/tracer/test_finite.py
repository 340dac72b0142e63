"""Finite checks: the chunked scan finds the first NaN/Inf wherever it sits (first, middle or last, partial, chunk),
never builds a mask larger than one chunk, and check_finite names the tensor, index and value."""

from __future__ import annotations

import math

import pytest
import torch

import tracer.finite as finite
from tracer.errors import GraphFileError, NonFiniteError
from tracer.finite import check_finite, first_nonfinite


@pytest.fixture
def chunk(monkeypatch) -> int:
    """Chunks of 4 elements: a [3, 5] tensor spans 4 chunks, the last one partial (elements 12..14)."""
    monkeypatch.setattr(finite, "CHUNK", 4)
    return 4


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("flat", "index"), [(0, (0, 0)), (3, (0, 3)), (6, (1, 1)), (8, (1, 3)), (14, (2, 4))],
                         ids=["first", "first-chunk-end", "middle", "middle-chunk-start", "last-partial"])  # fmt: skip
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nonfinite_found_in_any_chunk(chunk, dtype, flat, index, bad):
    t = torch.arange(15, dtype=dtype).reshape(3, 5)
    t.view(-1)[flat] = bad
    got = first_nonfinite(t)
    assert got is not None and got[0] == index and isinstance(got[1], float)
    assert math.isnan(got[1]) if math.isnan(bad) else got[1] == bad  # NaN as NaN, ±Inf with its sign


def test_first_of_several_is_reported(chunk):
    t = torch.zeros(3, 5)
    t[2, 4], t[1, 2], t[2, 0] = float("nan"), float("inf"), float("-inf")  # flat 14, 7, 10
    assert first_nonfinite(t) == ((1, 2), float("inf"))
    assert first_nonfinite(t.T) == ((0, 2), float("-inf"))  # a non-contiguous view: scanned in its own order


def test_finite_and_non_float_tensors_pass(chunk, monkeypatch):
    sizes = []
    real = torch.isfinite
    monkeypatch.setattr(torch, "isfinite", lambda x: sizes.append(x.numel()) or real(x))
    assert first_nonfinite(torch.linspace(-1e30, 1e30, 15).reshape(3, 5)) is None
    assert sizes == [4, 4, 4, 3]  # four chunks, never a mask of the whole tensor
    assert first_nonfinite(torch.arange(15).reshape(3, 5)) is None  # integers cannot hold NaN
    assert first_nonfinite(torch.zeros(0, 5)) is None
    assert first_nonfinite(torch.tensor(float("nan"))) == ((), pytest.approx(float("nan"), nan_ok=True))


def test_complex_nonfinite_is_reported(chunk):
    t = torch.zeros(3, 5, dtype=torch.complex64)
    t[2, 1] = torch.tensor(complex(1.0, float("inf")))
    index, value = first_nonfinite(t) or ((), 0.0)
    assert index == (2, 1) and value == complex(1.0, float("inf"))


def test_check_finite_names_the_first_bad_tensor(chunk):
    good, bad = torch.ones(3, 5), torch.ones(3, 5)
    bad[2, 3] = float("nan")
    check_finite({"a": good, "b": good.double()}, "weights")
    with pytest.raises(NonFiniteError, match=r"^weights: tensor b has a non-finite value \(nan at index \[2, 3\]\)"):
        check_finite([("a", good), ("b", bad), ("c", torch.full((2,), float("inf")))], "weights")
    with pytest.raises(GraphFileError, match=r"tensor c has a non-finite value \(-inf at index \[0\]\)"):
        check_finite(iter([("a", good), ("c", torch.tensor([float("-inf"), 1.0]))]), "sidecar", GraphFileError)
