import numpy as np
import pytest
import torch

from slimkit.compress import compress, load, save
from slimkit.errors import CheckpointError, SlimkitError

from _tiny_resnet import tiny_data, tiny_model


def test_pt2_round_trip_same_outputs_any_batch(tmp_path):
    model = tiny_model()
    path = save(model, tmp_path / "m.pt2", torch.randn(1, 3, 8, 8))
    back = load(path)
    x = torch.randn(5, 3, 8, 8)
    torch.testing.assert_close(back(x), model(x), rtol=1e-5, atol=1e-6)
    # plain PyTorch can open it without slimkit-specific code
    plain = torch.export.load(str(path)).module()
    torch.testing.assert_close(plain(x), model(x), rtol=1e-5, atol=1e-6)


def test_pq_model_round_trip(tmp_path):
    res = compress(tiny_model(), torch.randn(1, 3, 8, 8), "pq(k=4)", data=tiny_data(), progress=False, latency_batches=())
    back = load(save(res.model, tmp_path / "pq.pt2", torch.randn(2, 3, 8, 8)))
    x = torch.randn(3, 3, 8, 8)
    torch.testing.assert_close(back(x), res.model(x), rtol=1e-5, atol=1e-6)


def test_onnx_round_trip(tmp_path):
    pytest.importorskip("onnxruntime")
    res = compress(tiny_model(), torch.randn(1, 3, 8, 8), "int8", data=tiny_data(), progress=False, latency_batches=())
    back = load(save(res.model, tmp_path / "q.onnx", None))
    x = torch.randn(3, 3, 8, 8)
    torch.testing.assert_close(back(x), res.model(x), rtol=0, atol=0)


def test_bad_paths(tmp_path):
    with pytest.raises(SlimkitError, match="is saved as '.pt2'"):
        save(tiny_model(), tmp_path / "m.onnx", torch.randn(1, 3, 8, 8))
    with pytest.raises(FileNotFoundError, match="no saved model"):
        load(tmp_path / "missing.pt2")
    bad = tmp_path / "junk.pt2"
    bad.write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="not a readable torch.export"):
        load(bad)


# ---------------------------------------------------------------------------- planted payloads
# Each vector takes a clean archive written by `save` and plants code that plain `torch.export.load(...)
# .module()(x)` runs (asserted, so the payloads are live); slimkit.compress.load must refuse each one with
# a CheckpointError naming the file, and nothing may run.
import io  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import zipfile  # noqa: E402


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def _torch_saved(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _edit_json(entries, name, fn):
    data = json.loads(entries[name])
    fn(data)
    entries[name] = json.dumps(data).encode()


def _pickled_weight(e, root, marker):
    def fn(d):
        key = next(iter(d["config"]))
        d["config"][key]["use_pickle"] = True
        e[root + "data/weights/" + d["config"][key]["path_name"]] = _torch_saved(_Payload(marker))
    _edit_json(e, root + "data/weights/model_weights_config.json", fn)


def _pickled_sample_inputs(e, root, marker):
    e[root + "data/sample_inputs/model.pt"] = _torch_saved(_Payload(marker))


def _exec_in_guards(e, root, marker):
    _edit_json(e, root + "models/model.json",
               lambda d: d.__setitem__("guards_code", [f"open({str(marker)!r}, 'w').write('ran') > 0"]))


def _eval_in_sympy_expr(e, root, marker):
    text = e[root + "models/model.json"].decode()
    text = text.replace("\"Symbol('s", f"\"(open({str(marker)!r}, 'w').write('ran') and Symbol('s", 1)
    e[root + "models/model.json"] = text.replace("integer=True)\"", "integer=True))\"", 1).encode()


def _code_in_forward_arg_names(e, root, marker):
    def fn(d):
        d["graph_module"]["module_call_graph"][0]["signature"]["forward_arg_names"] = [
            "x", f"y=open({str(marker)!r}, 'w').write('ran')"]
    _edit_json(e, root + "models/model.json", fn)


def _plant(tmp_path, vector):
    clean = save(tiny_model(), tmp_path / "clean.pt2", torch.randn(1, 3, 8, 8))
    with zipfile.ZipFile(clean) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    root = next(iter(entries)).split("/")[0] + "/"
    marker = tmp_path / "marker"
    vector(entries, root, marker)
    evil = tmp_path / "evil.pt2"
    with zipfile.ZipFile(evil, "w", zipfile.ZIP_STORED) as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return evil, marker


@pytest.mark.parametrize("vector,refusal", [
    (_pickled_weight, "is a pickled payload"),
    (_pickled_sample_inputs, "sample inputs are not plain tensors"),
    (_exec_in_guards, "guard .* which is not shape arithmetic"),
    (_eval_in_sympy_expr, "symbolic expression .* which is not shape arithmetic"),
    (_code_in_forward_arg_names, "forward_arg_names .* are not all Python identifiers"),
])
def test_planted_pt2_payloads_never_run(tmp_path, vector, refusal):
    evil, marker = _plant(tmp_path, vector)
    with pytest.raises(CheckpointError, match=f"refused to load {evil}: .*{refusal}"):
        load(evil)
    assert not marker.exists()
    # The payload is live: plain torch runs it (torch 2.13). If torch stops running it, this still passes.
    try:
        torch.export.load(str(evil)).module()(torch.randn(2, 3, 8, 8))
    except Exception:  # noqa: BLE001 - many payloads break the program after they ran
        pass
    assert marker.exists()


def test_pt2_with_native_code_or_foreign_layout_is_refused(tmp_path):
    def aoti(e, root, marker):
        e[root + "data/aotinductor/model/model.so"] = b"\x7fELF not really"

    def control_char(e, root, marker):  # a carriage return would end a generated comment line
        _edit_json(e, root + "models/model.json", lambda d: d["graph_module"]["graph"]["nodes"][0]["metadata"]
                   .__setitem__("stack_trace", 'File "a\rimport os#", line 1, in f\n    x'))

    evil, _ = _plant(tmp_path, aoti)
    with pytest.raises(CheckpointError, match="unexpected entry 'data/aotinductor/model/model.so'"):
        load(evil)
    evil, _ = _plant(tmp_path, control_char)
    with pytest.raises(CheckpointError, match="refused to load .*string 'File \"a\\\\rimport os"):
        load(evil)
    old = tmp_path / "old.pt2"
    with zipfile.ZipFile(old, "w") as z:  # the torch 2.7-era layout goes through pickled files
        z.writestr("version", "8.0")
        z.writestr("serialized_state_dict.pt", _torch_saved({}))
    with pytest.raises(CheckpointError, match="one top-level folder"):
        load(old)


def test_bad_onnx_files_are_refused(tmp_path):
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"this is not a model")
    with pytest.raises(CheckpointError, match="garbage.onnx is not an ONNX model"):
        load(garbage)
    from onnx import helper, numpy_helper
    from onnx.external_data_helper import set_external_data

    w = numpy_helper.from_array(np.ones((2, 2), np.float32), "w")
    set_external_data(w, location="../../etc/passwd")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 2])], [w])
    ext = tmp_path / "ext.onnx"
    ext.write_bytes(helper.make_model(graph).SerializeToString())
    with pytest.raises(CheckpointError, match="refers to external data files"):
        load(ext)


@pytest.mark.usefixtures("sigint_raises")
def test_save_is_atomic_when_interrupted(tmp_path, monkeypatch):
    import signal

    path = save(tiny_model(), tmp_path / "m.pt2", torch.randn(1, 3, 8, 8))
    before = open(path, "rb").read()
    real_save = torch.export.save

    def interrupted(ep, f, **kw):
        real_save(ep, f, **kw)
        with open(f, "r+b") as fh:
            fh.truncate(100)  # half-written
        signal.raise_signal(signal.SIGINT)  # to this thread: os.kill(pid) can be handled late under load

    monkeypatch.setattr(torch.export, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save(tiny_model(), path, torch.randn(1, 3, 8, 8))
    assert open(path, "rb").read() == before and os.listdir(tmp_path) == ["m.pt2"]
