"""The train job's connectivity + signal section: figures equal the analysis functions' own, warnings follow them."""

from __future__ import annotations

import pytest
import torch

import sparseflow as sf
from sparseflow.analysis.connectivity import connectivity
from sparseflow.analysis.signal import GAIN_BAND, signal
from sparseflow.training.job import TrainJob
from sparseflow.training.result import connectivity_warnings, health_warnings, signal_note, signal_warnings
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
    # every warning names what changes it
    assert any("--no-prune-first" in w and "sf.repair_mask" in w for w in warnings if "layer collapse" in w)
    assert any("sf.sparse_init_" in w for w in warnings if "vanishing" in w)

    healthy = MLP(8, 3, hidden=(256,))
    for layer in healthy.layers:
        torch.nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
    sig = signal(healthy, torch.randn(256, 8))
    assert sig.verdict == "critical"  # He init: chi = 1 per layer
    assert health_warnings(connectivity(healthy), sig) == []


# --- warnings a user can act on -------------------------------------------------------------------------
def _mlp(seed: int = 0) -> MLP:
    torch.manual_seed(seed)
    model = MLP(32, 10, hidden=(128, 128))
    with torch.no_grad():  # no biases: the gain is then R_l times the activation's, so masking scales it by density
        for layer in model.layers:
            layer.bias.zero_()
    return model


def _masked_mlp(sparse_init: bool, seed: int = 0) -> MLP:
    model = _mlp(seed)
    # (the mask seed differs from the weights' seed: torch.rand from the same seed would repeat the init's draws)
    method = sf.RandomSparse(0.9, distribution=sf.uniform, seed=seed + 1, sparse_init=sparse_init)
    method.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
    return model


def test_signal_warning_only_when_the_mask_shrinks_the_signal():
    x = torch.randn(256, 32)
    dense = signal(_mlp(), x)  # the same weights before masking
    assert dense.verdict == "vanishing"  # PyTorch's default init: chi = 1/6 per ReLU layer, dense or not
    # Masked to density 0.1 without rescaling, each of the 3 layers' R shrinks tenfold: the mask's doing.
    shrunk = signal(_masked_mlp(sparse_init=False), x)
    assert shrunk.gain / dense.gain == pytest.approx(0.1**3, rel=0.3)
    (w,) = signal_warnings(shrunk, dense)
    assert "vanishing" in w and f"{shrunk.gain:.3g}" in w and f"{dense.gain:.3g}" in w
    assert "--sparse-init rescale" in w and "sf.rescale_" in w and "sf.sparse_init_" in w
    # Rescaled to each unit's kept fan-in, the sparse net has the dense net's gain: no warning, the report
    # says why (the init, not the mask).
    rescaled = signal(_masked_mlp(sparse_init=True), x)
    assert GAIN_BAND[0] <= rescaled.gain / dense.gain <= GAIN_BAND[1] and rescaled.verdict == "vanishing"
    assert signal_warnings(rescaled, dense) == []
    assert "the mask does not change the verdict" in signal_note(rescaled, dense, False, "random")
    # A method that starts dense (GMP) measures the dense init itself: never a sparsity warning.
    assert signal_warnings(dense, None, starts_dense=True) == []
    assert "starts from the dense network" in signal_note(dense, None, True, "gmp")


def test_default_gmp_run_has_no_signal_warning(tmp_path):
    job = TrainJob(method="gmp", sparsity=0.9, epochs=2, hidden=(64, 32), baseline=False)
    result = run_train_job(job, tmp_path, progress=False)
    assert result.signal is not None and result.signal.verdict == "vanishing"  # PyTorch's dense init
    assert result.starts_dense and result.signal_reference is None
    assert not any("signal" in w for w in result.warnings)
    report = (tmp_path / "report.md").read_text()
    assert "gmp starts from the dense network" in report and "--sparse-init he" in report


def test_sparse_init_he_starts_critical_and_auto_keeps_the_run_name(tmp_path):
    assert TrainJob().run_name() == TrainJob(sparse_init="auto").run_name()  # old run directories keep their names
    assert TrainJob(sparse_init="he").run_name() != TrainJob().run_name()
    job = TrainJob(method="random", sparsity=0.9, sparse_init="he", epochs=1, hidden=(128, 128), baseline=False)
    result = run_train_job(job, tmp_path, progress=False)
    # He's init drawn per unit's kept fan-in: chi = 1 for every ReLU layer (mean field), so the verdict is critical.
    assert result.signal.verdict == "critical" and not result.starts_dense
    assert result.signal_reference.verdict == "critical"  # the dense reference gets He's init too
    assert not any("signal" in w for w in result.warnings)
    data = result.to_json()
    assert data["signal_dense_reference"]["verdict"] == "critical" and data["signal_starts_dense"] is False


def test_unused_weights_warning_gives_the_effective_sparsity_and_the_repair():
    torch.manual_seed(0)
    model = MLP(16, 4, hidden=(32, 32))
    with torch.no_grad():
        model.layers[1].weight[:8] = 0  # 8 units of layer 1 lose every input: they emit a constant
    conn = connectivity(model)
    wasted = conn.nonzeros - conn.effective
    (w,) = connectivity_warnings(conn, "runs/x")
    assert f"{wasted:,} of the {conn.nonzeros:,} kept weights" in w
    assert f"effective sparsity is {conn.effective_sparsity:.4f}" in w and "layers.1.weight 8/32" in w
    assert "`sparseflow analyze runs/x --repair FILE.safetensors`" in w and "sf.repair_mask" in w
    # The remedy it names works: after the repair every kept weight is on a path and the warning is gone.
    mask, _ = sf.repair_mask(model)
    sf.apply_repair_(model, mask)
    assert connectivity_warnings(connectivity(model)) == []


def test_layer_local_connectivity_warns_with_the_no_incoming_counts():
    torch.manual_seed(0)
    model = MLP(16, 4, hidden=(32,))
    with torch.no_grad():
        model.layers[0].weight[:5] = 0
    local = connectivity(model, analysis="layer-local")
    assert local.layers[0].unreachable is None  # no paths in a layer-local analysis
    (w,) = connectivity_warnings(local)
    assert "layers.0.weight 5/32" in w and "sf.Targets(exclude=('layers.0.weight',))" in w
