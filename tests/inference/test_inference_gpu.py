"""GPU: torch's semi-structured 2:4 sparse matmul against dense on one layer (skips without CUDA)."""

from __future__ import annotations

import pytest
import torch


@pytest.mark.gpu
def test_semi_structured_24_matches_dense():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    from torch.sparse import to_sparse_semi_structured

    w = torch.randn(256, 256, device="cuda", dtype=torch.float16)
    w = w * torch.tensor([1, 1, 0, 0], device="cuda", dtype=w.dtype).repeat(256, 64)  # 2 of every 4 kept
    x = torch.randn(256, 128, device="cuda", dtype=torch.float16)
    y = torch.mm(to_sparse_semi_structured(w), x)
    torch.testing.assert_close(y, torch.mm(w, x), rtol=1e-2, atol=1e-2)
