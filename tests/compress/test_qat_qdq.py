"""The Q/DQ QAT engine: BatchNorm folding, the fake-quant read from the PTQ Q/DQ model, and the placement
identity between the PTQ and the QAT Q/DQ files (one policy, by construction)."""

from __future__ import annotations

import copy

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

from edgetl.compress.quantize import ort_qdq, qat_qdq  # noqa: E402
from edgetl.compress.quantize.ort_qdq import OrtQDQ, QDQSettings, check_qdq_rules, quantized_layers  # noqa: E402
from edgetl.compress.quantize.qdq_graph import GraphIndex, keep_float_nodes  # noqa: E402
from edgetl.errors import ModelError  # noqa: E402

MINMAX = QDQSettings(calibration="minmax")


@pytest.fixture(scope="module")
def lite0(learned_base):
    from edgetl.compress.quantize import calibration_samples
    from edgetl.data import EvalImages, run_eval_samples
    from edgetl.models import load_run_model
    from edgetl.preprocessing import PreprocessSpec
    from edgetl.run.manifest import Manifest

    manifest = Manifest.load(learned_base)
    spec = PreprocessSpec.from_dict(manifest.preprocessing)
    calib = calibration_samples(manifest, None, 24, seed=0)
    samples = run_eval_samples(manifest, split="val") + run_eval_samples(manifest, split="train")
    images = np.concatenate([batch for batch, _ in EvalImages(samples, spec).batches(64)])
    model, _ = load_run_model(learned_base)
    float_model = onnx.load(learned_base / "onnx" / "model.onnx")
    return {"float": float_model, "calib": calib, "spec": spec, "images": images, "torch": model,
            "ptq": ort_qdq.quantize_qdq(float_model, calib, spec, MINMAX)}


def _mean_abs(a, b):
    return float(np.mean(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def _logits(model, images):
    with torch.no_grad():
        return model(torch.from_numpy(images)).numpy()


def test_folding_keeps_the_function_and_leaves_no_batchnorm(lite0):
    model = copy.deepcopy(lite0["torch"])
    x = lite0["images"][:8]
    before = _logits(model, x)
    folded = qat_qdq.fold_batchnorms(model, torch.from_numpy(x[:1]))
    assert folded == sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in lite0["torch"].modules())
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    np.testing.assert_allclose(_logits(model, x), before, atol=1e-4)


def test_fake_quant_reproduces_the_ptq_qdq_model(lite0):
    """The fake-quantized PyTorch model is much closer to the PTQ Q/DQ model under ONNX Runtime than the float
    model is: it computes what the Q/DQ file computes (every quantized layer, weights and input, and the
    residual shortcuts that read a quantized input)."""
    qdq = lite0["ptq"]
    model = copy.deepcopy(lite0["torch"])
    x = lite0["images"]
    reference = _logits(model, x)
    qat_qdq.fold_batchnorms(model, torch.from_numpy(x[:1]))
    modules = qat_qdq.weighted_modules(model)
    plan = qat_qdq.plan_from_qdq(qdq, modules)
    assert sorted(plan.weights) == sorted(plan.input_scales) and len(plan.weights) == len(quantized_layers(qdq))
    assert plan.residual_inputs and plan.not_emulated == 0
    qat_qdq.attach_fake_quant(model, plan, torch.from_numpy(x[:1]))
    from torch.nn.utils import parametrize

    assert sorted(n for n, m in modules.items() if parametrize.is_parametrized(m, "weight")) == plan.weights
    ort = ort_qdq.session(qdq, optimize=False).run(None, {"input": x})[0]
    assert _mean_abs(_logits(model, x), ort) < 0.6 * _mean_abs(reference, ort)


def test_qat_qdq_file_has_the_ptq_placement_and_ranges(lite0):
    """Through the engine (prepare, a changed weight, export): the same Q/DQ nodes in the same places as PTQ,
    the same activation scales, other weights; it passes the TensorRT rule checker and runs."""
    engine = qat_qdq.QDQTraining()
    model = engine.prepare(copy.deepcopy(lite0["torch"]), lite0["float"], lite0["calib"], lite0["spec"], MINMAX,
                           OrtQDQ())
    with torch.no_grad():
        first = model.get_submodule(engine.plan.weights[0])
        first.parametrizations.weight.original.mul_(1.05)  # training changed a weight
    qat = engine.export(model)
    ptq = lite0["ptq"]
    keep, _ = keep_float_nodes(qat, MINMAX.keep_float)
    assert keep and check_qdq_rules(qat, keep) == []
    assert quantized_layers(qat) == quantized_layers(ptq)
    assert [(n.op_type, list(n.input), list(n.output)) for n in qat.graph.node] == \
           [(n.op_type, list(n.input), list(n.output)) for n in ptq.graph.node]

    def activation_scales(model):
        index = GraphIndex(model)
        return {n.name: float(index.array(n.input[1]).reshape(-1)[0]) for n in model.graph.node
                if n.op_type == "QuantizeLinear" and index.array(n.input[0]) is None}

    assert activation_scales(qat) == activation_scales(ptq)
    weights = {n: w for n, w in qat_qdq.qdq_layer_weights(qat).items()}
    changed = [n for n, w in qat_qdq.qdq_layer_weights(ptq).items() if not np.allclose(w, weights[n], atol=1e-6)]
    assert len(changed) == 1
    out = ort_qdq.session(qat, optimize=False).run(None, {"input": lite0["images"][:4]})[0]
    assert out.shape == (4, 3) and np.isfinite(out).all()


def test_an_onnx_file_from_another_model_is_refused(lite0, tiny_run):
    engine = qat_qdq.QDQTraining()
    other = onnx.load(tiny_run / "onnx" / "model.onnx")
    with pytest.raises(ModelError, match="has no PyTorch twin"):
        engine.prepare(copy.deepcopy(lite0["torch"]), other, lite0["calib"], lite0["spec"], MINMAX, OrtQDQ())
