"""Export to ONNX and QONNX, checked by running the exported files.

ONNX files run in onnxruntime, QONNX files in qonnx's executor. Every binary layer's integer
result (sums before the weight scale, votes of every voter spec, ``P`` counts) must equal the
PyTorch layer's bit for bit; logits agree within ``1e-4 * max(1, max |logit|)`` (float
rounding of the real-valued ops) and top-1 agrees.
"""

import importlib.util
import json
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import bitvote
from bitvote.cli import main
from bitvote.errors import BitvoteError
from bitvote.nn import BinaryConv2d, Sign
from bitvote.train import checkpoint as C

import oracle  # the tests' brute-force reference, beside this file

HAVE = all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime", "qonnx"))
needs_export = pytest.mark.skipif(not HAVE, reason="the [export] extra is not installed (pip install 'bitvote[export]')")

if HAVE:
    from bitvote import export as E


def _trained_like(name, voter, width=0.0625, **kw):
    """A small model with non-trivial BN statistics and RSign shifts (as after training)."""
    torch.manual_seed(0)
    m = bitvote.models.create(name, voter=voter, width=width, **kw).eval()
    g = torch.Generator().manual_seed(1)
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-1, 1, generator=g)
            mod.running_var.uniform_(0.5, 2, generator=g)
            mod.weight.data.uniform_(-1, 1, generator=g)
            mod.bias.data.uniform_(-1, 1, generator=g)
        if isinstance(mod, bitvote.RSign):
            mod.shift.bias.data.uniform_(-0.3, 0.3, generator=g)
    return m


def _images(n=2, seed=3):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _assert_exact(m, report):
    binary = [x for x in m.modules() if isinstance(x, BinaryConv2d)]
    layers = [k for k in report["layers"] if ":level" not in k]
    assert len(layers) == len(binary)  # every binary layer was probed ...
    below_root = sum(x.hierarchy.depth - 1 for x in binary if x.hierarchy is not None)
    assert len(report["layers"]) - len(layers) == below_root  # ... and every level of its tree
    assert report["bits_flipped"] == 0, {k: v for k, v in report["layers"].items() if v["mismatches"]}
    assert report["logits_max_abs"] <= report["atol"]
    assert report["top1_agree"] == 1.0
    assert report["ok"]


slow = pytest.mark.slow
ONNX_CASES = [
    # in every run: a 3-level tree with a 'first' tie over zero padding, P roots without BN,
    # +1 padding, ReActNet-A's 1x1 layers BN-free, the float teacher
    ("reactnet18", "tap,groups=2", {"tie": "first,-1,1"}),
    ("xnornet18", "P(M9)", {"bn": "none"}),
    ("birealnet18", "popcount", {"pad_value": 1}),
    ("reactneta", {"*.conv3x3": "tap", "*": "mv"}, {"bn": "free", "width": 0.03125}),
    ("resnet18", "popcount", {}),
    pytest.param("reactnet18", "mv", {}, marks=slow),
    pytest.param("reactnet18", "popcount", {}, marks=slow),
    pytest.param("reactnet18", "tap", {"tie": "first"}, marks=slow),
    pytest.param("reactnet18", "tap,leaf=2", {"tie": -1}, marks=slow),
    pytest.param("reactnet18", "groups=4", {"tie": "first"}, marks=slow),
    pytest.param("birealnet18", "cm:P(M3)", {}, marks=slow),
    pytest.param("birealnet18", "cgroups=2", {"pad_value": -1}, marks=slow),
    pytest.param("xnornet18", "mv", {"bn": "none"}, marks=slow),
    pytest.param("reactnet18", "mv", {"bn": "free"}, marks=slow),
    pytest.param("reactneta", "mv", {}, marks=slow),
]


@needs_export
@pytest.mark.parametrize("name,voter,kw", ONNX_CASES)
def test_onnx_matches_pytorch(name, voter, kw):
    m = _trained_like(name, voter, **kw)
    proto = E.to_onnx(m, probes=True)
    assert {o.domain for o in proto.opset_import} == {""}  # standard ops only
    _assert_exact(m, E.check(m, proto, _images()))


@needs_export
def test_onnx_file_without_probes_runs_and_has_dynamic_batch(tmp_path):
    m = _trained_like("birealnet18", "mv", width=0.03125)
    path = tmp_path / "m.onnx"
    E.to_onnx(m, path)
    x = _images(3)
    out = E.run(path, x)
    assert list(out) == ["logits"]
    ref = m(x).detach().numpy()
    assert np.abs(out["logits"] - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())
    assert (out["logits"].argmax(1) == ref.argmax(1)).all()


QONNX_CASES = [
    ("xnornet18", "mv", {}),  # BN + sign folded into thresholds on the votes
    ("xnornet18", "popcount", {"tie": -1, "bn": "free"}),  # ... and on the scaled sums, through a gain
    pytest.param("birealnet18", "mv", {"tie": -1, "pad_value": -1}, marks=slow),
    pytest.param("reactnet18", "popcount", {}, marks=slow),
]


@needs_export
@pytest.mark.parametrize("name,voter,kw", QONNX_CASES)
def test_qonnx_matches_pytorch_in_qonnx_executor(name, voter, kw):
    m = _trained_like(name, voter, width=0.03125, **kw)
    proto = E.to_qonnx(m, batch=2, probes=True)
    ops = {n.op_type for n in proto.graph.node}
    assert {"BipolarQuant", "Conv"} <= ops
    assert ("MultiThreshold" in ops) == (voter == "mv" or name == "xnornet18")
    assert not {"Sign", "Where"} & ops  # binarization and votes only as QONNX quantizers / thresholds
    custom = {n.domain for n in proto.graph.node if n.op_type in ("BipolarQuant", "MultiThreshold")}
    assert custom == {"qonnx.custom_op.general"}
    _assert_exact(m, E.check(m, proto, _images(2)))


@needs_export
def test_qonnx_folds_bn_and_sign_into_thresholds():
    """XNOR-Net's conv1 -> BN -> sign becomes one MultiThreshold on the integer output."""
    m = _trained_like("xnornet18", "popcount", width=0.03125)
    proto = E.to_qonnx(m)
    ops = [n.op_type for n in proto.graph.node]
    bns = sum(op == "BatchNormalization" for op in ops)
    blocks = sum(1 for _ in m.modules() if type(_).__name__ == "XnorBlock")
    # stem BN, one BN per block (bn2), the downsampling shortcuts' BN; bn1 is folded
    shortcut_bns = sum(1 for b in m.modules() if type(b).__name__ == "XnorBlock" and b.downsample)
    assert bns == 1 + blocks + shortcut_bns
    assert ops.count("MultiThreshold") == blocks


@needs_export
@pytest.mark.parametrize("voter,kw,why", [
    ("tap", {}, "hierarchy"),
    ("P(M9)", {}, "hierarchy"),
    ("mv", {"tie": "first"}, "first"),
])
def test_qonnx_refuses_what_finn_cannot_express(voter, kw, why):
    m = _trained_like("reactnet18", voter, **kw)
    with pytest.raises(BitvoteError, match=why) as e:
        E.to_qonnx(m)
    msg = str(e.value)
    assert "\n" not in msg and "layer1.0.conv" in msg and "--format onnx" in msg


@needs_export
def test_qonnx_survives_finns_front_end_lowering():
    """The steps FINN starts with (cleanup, weight quantizers folded, datatypes inferred, convs
    lowered to Im2Col + MatMul) keep the file runnable and exact; +1 padding (FINN cannot pad a
    bipolar stream with 0) becomes an explicit Pad."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.transformation.fold_constants import FoldConstants
    from qonnx.transformation.infer_datatypes import InferDataTypes
    from qonnx.transformation.infer_shapes import InferShapes
    from qonnx.transformation.lower_convs_to_matmul import LowerConvsToMatMul
    from qonnx.util.cleanup import cleanup_model

    m = _trained_like("xnornet18", "mv", width=0.03125, pad_value=1)
    assert E.finn_notes(m) == []
    mw = cleanup_model(ModelWrapper(E.to_qonnx(m)))
    mw = mw.transform(FoldConstants(exclude_op_types=[])).transform(InferDataTypes())
    mw = mw.transform(LowerConvsToMatMul()).transform(InferShapes())
    ops = {n.op_type for n in mw.graph.node}
    assert "Im2Col" in ops and "MatMul" in ops
    for n in mw.graph.node:
        if n.op_type == "MultiThreshold":
            assert mw.get_tensor_datatype(n.output[0]).name == "BIPOLAR"
    x = _images(1)
    out = next(iter(E.run(mw.model, x, "qonnx").values()))
    ref = m(x).detach().numpy()
    assert np.abs(out - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())
    assert E.finn_notes(_trained_like("xnornet18", "mv", width=0.03125))[0].startswith("16 binary layer(s) use zero padding")


@needs_export
def test_run_refuses_images_that_do_not_fit(tmp_path):
    m = _trained_like("birealnet18", "mv", width=0.03125)
    proto = E.to_onnx(m)
    with pytest.raises(BitvoteError, match="do not fit"):
        E.run(proto, torch.randn(1, 3, 16, 16))
    x = _images(1)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(BitvoteError, match="NaN"):
        E.run(proto, x)


@needs_export
def test_real_weights_are_refused():
    m = bitvote.models.create("reactnet18", width=0.0625)
    for layer in m.modules():
        if isinstance(layer, BinaryConv2d):
            layer.binary_weights = False
    with pytest.raises(BitvoteError, match="real weights"):
        E.to_onnx(m)


# --------------------------------------------------------------------------------------------
# One layer, every voter spec, tie rule and padding (hypothesis)
# --------------------------------------------------------------------------------------------


class _OneLayer(nn.Sequential):
    pass


def _specs(C, k):
    n = C * k * k
    out = ["popcount", "mv", "tap", "groups=2", "tap,groups=2", "tap,leaf=2", "cgroups=2",
           f"M3(M{n // 3}, M{n // 3}, M{n - 2 * (n // 3)})", f"P(M{n // 2})"]
    if k == 3:
        out += [f"cm:M{C}(M3(M3))", "cm:P(M3)", "P(M9)"]
    return out


@st.composite
def _layer_case(draw):
    C = draw(st.sampled_from([2, 4]))
    k = draw(st.sampled_from([1, 3]))
    spec = draw(st.sampled_from(_specs(C, k)))
    rule = st.sampled_from(["1", "-1", "first"])
    tie = draw(st.one_of(rule, st.lists(rule, min_size=2, max_size=3).map(",".join)))  # or root-first per level
    stride = draw(st.sampled_from([1, 2]))
    padding = draw(st.sampled_from([0, 1, 2])) if k == 3 else 0
    pad_value = draw(st.sampled_from([0.0, 1.0, -1.0]))
    H = draw(st.integers(3, 7))
    W = draw(st.integers(3, 7))
    seed = draw(st.integers(0, 2**16))
    return C, k, spec, tie, stride, padding, pad_value, H, W, seed


def _layer_model(C, k, spec, tie, stride, padding, pad_value, seed):
    torch.manual_seed(seed)
    conv = BinaryConv2d(C, 3, k, stride, padding, voter=spec, tie=tie, pad_value=pad_value, input_surrogate=None)
    conv.layer_name = "conv"
    return _OneLayer(Sign(), conv).eval()


def _inputs(C, H, W, seed):
    """Real inputs with exact zeros and -0.0 (both binarize to +1)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, C, H, W, generator=g)
    pick = torch.randint(0, 4, x.shape, generator=g)
    x = torch.where(pick == 0, torch.zeros(()), x)
    return torch.where(pick == 1, torch.full((), -0.0), x)


@needs_export
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_layer_case())
def test_single_layer_onnx_is_exact(case):
    C, k, spec, tie, stride, padding, pad_value, H, W, seed = case
    assume(H + 2 * padding >= k and W + 2 * padding >= k)
    try:
        m = _layer_model(C, k, spec, tie, stride, padding, pad_value, seed)
    except BitvoteError:
        assume(False)
    x = _inputs(C, H, W, seed)
    got = E.run(E.to_onnx(m, input_size=(C, H, W)), x)["logits"]
    assert np.array_equal(got, m(x).detach().numpy()), (spec, tie, stride, padding, pad_value)


@st.composite
def _oracle_case(draw):
    C = draw(st.sampled_from([2, 3, 4]))
    k = draw(st.sampled_from([1, 3]))
    spec = draw(st.sampled_from(oracle.voter_specs(C, k * k, deep=True)))
    tie = draw(st.sampled_from([1, -1, "first"]))
    padding = draw(st.sampled_from([0, 1])) if k == 3 else 0
    return C, k, spec, tie, draw(st.sampled_from([1, 2])), padding, draw(st.sampled_from([0.0, 1.0, -1.0])), \
        draw(st.integers(3, 6)), draw(st.integers(3, 6)), draw(st.integers(0, 2**16))


@needs_export
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_oracle_case())
def test_single_layer_onnx_matches_the_brute_force_oracle(case):
    """Against the tests' own oracle, which walks every output's terms node by node."""
    C, k, spec, tie, stride, padding, pad_value, H, W, seed = case
    try:
        m = _layer_model(C, k, spec, tie, stride, padding, pad_value, seed)
    except BitvoteError:
        assume(False)
    conv, h = m[1], m[1].hierarchy
    x = _inputs(C, H, W, seed)
    kw = {} if h is None else dict(levels=[list(lv.groups) for lv in h.levels], ties=[lv.tie for lv in h.levels],
                                   root=h.root, order=h.order)
    want = oracle.binary_conv(x, conv.weight.detach(), stride, padding, pad_value, **kw)
    got = E.run(E.to_onnx(m, input_size=(C, H, W)), x)["logits"]
    assert np.array_equal(got, want.numpy()), (spec, tie, stride, padding, pad_value)


@needs_export
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_layer_case())
def test_single_layer_qonnx_is_exact(case):
    C, k, spec, tie, stride, padding, pad_value, H, W, seed = case
    assume(H + 2 * padding >= k and W + 2 * padding >= k)
    spec = spec if spec in ("popcount", "mv") else "mv"
    tie = -1 if "-1" in tie.split(",")[:1] else 1
    m = _layer_model(C, k, spec, tie, stride, padding, pad_value, seed)
    x = _inputs(C, H, W, seed)
    got = E.run(E.to_qonnx(m, input_size=(C, H, W), batch=2), x)["logits"]
    assert np.array_equal(got, m(x).detach().numpy()), (spec, tie, stride, padding, pad_value)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def _checkpoint(tmp_path, name="xnornet18", voter="mv"):
    m = _trained_like(name, voter, width=0.03125)
    path = tmp_path / f"{name}.pt"
    torch.save(C.model_checkpoint(m), path)
    return path


@needs_export
@pytest.mark.parametrize("fmt", ["onnx", "qonnx"])
def test_cli_export_and_check(tmp_path, capsys, fmt):
    ck = _checkpoint(tmp_path)
    out = tmp_path / f"m.{fmt}.onnx"
    rc = main(["export", str(ck), "--format", fmt, "--out", str(out), "--check", "synthetic:2", "--json"])
    res = json.loads(capsys.readouterr().out)
    assert rc == 0 and out.is_file()
    assert res["check"]["ok"] and res["check"]["bits_flipped"] == 0 and res["check"]["images"] == 2
    assert E.run(out, _images(1))["logits"].shape == (1, 10)


@needs_export
def test_cli_qonnx_hierarchy_is_one_error_line(tmp_path, capsys):
    ck = _checkpoint(tmp_path, "reactnet18", "tap")
    out = tmp_path / "m.onnx"
    rc = main(["export", str(ck), "--format", "qonnx", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("bitvote: error: ") and err.count("\n") == 1 and "FINN" in err
    assert not out.exists()


@needs_export
def test_cli_bad_check_data_is_refused_before_writing(tmp_path, capsys):
    ck = _checkpoint(tmp_path)
    out = tmp_path / "m.onnx"
    rc = main(["export", str(ck), "--format", "onnx", "--out", str(out), "--check", str(tmp_path / "no.pt")])
    assert rc == 2 and "does not exist" in capsys.readouterr().err and not out.exists()


@needs_export
def test_fixed_batch_runs_in_whole_slices():
    m = _trained_like("birealnet18", "mv", width=0.03125)
    proto = E.to_onnx(m, batch=2)
    x = _images(4)
    assert np.abs(E.run(proto, x)["logits"] - m(x).detach().numpy()).max() < 1e-4
    with pytest.raises(BitvoteError, match="whole number"):
        E.run(proto, x[:3])


def test_cli_names_the_extra_when_packages_are_missing(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    ck = tmp_path / "none.pt"
    ck.write_bytes(b"never read: the missing extra is said first")
    rc = main(["export", str(ck), "--format", "onnx", "--out", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert err.startswith("bitvote: error: ") and "bitvote[export]" in err and "'onnx'" in err
