"""The train job's connectivity + signal section: figures equal the analysis functions' own, warnings follow them."""

from __future__ import annotations

import torch

from sparseflow.analysis.connectivity import connectivity
from sparseflow.analysis.signal import signal
from sparseflow.training.job import TrainJob
from sparseflow.training.result import health_warnings
from sparseflow.training.run import run_train_job
from sparseflow.training.models import MLP


def test_train_job_reports_connectivity_and_signal(tmp_path):
    job = TrainJob(method="random", sparsity=0.9, epochs=1, hidden=(64, 32), baseline=False)
    result = run_train_job(job, tmp_path, progress=False)
    # The connectivity in the result is that of the saved model: recompute it from the checkpoint's weights.
    model = MLP(64, 10, hidden=(64, 32))
    from sparseflow.io import load_state

    model.load_state_dict(load_state(tmp_path / "checkpoint.safetensors")[0]["model"])
    assert result.connectivity == connectivity(model)
    assert result.signal is not None and len(result.signal.layers) == 3
    data = result.to_json()
    assert data["connectivity"]["effective_sparsity"] == result.connectivity.effective_sparsity
    assert data["signal"]["verdict"] == result.signal.verdict
    report = (tmp_path / "report.md").read_text()
    assert "## Connectivity and signal" in report and result.signal.verdict in report


def test_warnings_name_collapse_and_vanishing_signal():
    torch.manual_seed(0)
    model = MLP(8, 3, hidden=(16,) * 12)
    with torch.no_grad():
        model.layers[5].weight.zero_()  # cuts every path
    warnings = health_warnings(connectivity(model), signal(model, torch.randn(32, 8)))
    assert any("layer collapse" in w for w in warnings)
    assert any("vanishing" in w for w in warnings)  # PyTorch's default init: chi = 1/6 per ReLU layer

    healthy = MLP(8, 3, hidden=(256,))
    for layer in healthy.layers:
        torch.nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
    sig = signal(healthy, torch.randn(256, 8))
    assert sig.verdict == "critical"  # He init: chi = 1 per layer
    assert health_warnings(connectivity(healthy), sig) == []
