"""O1 on the 9 light zoo models: small ConstantOfShape weights fold to constants, large
ones stay splat ops (a fold must not grow the model: the .gxm stays small), no identity or
dropout remains, fewer ops, and the outputs equal the unoptimized module's."""
import os

import numpy as np
import onnx
import pytest

import galaxir as gx
from galaxir.passes.basic.fold import GROWTH_FLOOR_BYTES
from galaxir.testing import zoo

SLOW = {"densenet121", "vgg19", "inception_v2"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                  for n in sorted(zoo.MODELS)])
def test_o1_folds_weights_and_keeps_outputs(name, tmp_path):
    proto = onnx.load(str(zoo.model_path(name)))
    m0 = gx.import_model(proto)
    m1 = gx.optimize(m0, level=1)
    counts = m1.op_counts()
    assert m0.op_counts().get("constant_of_shape", 0) > 0
    assert counts.get("constant_of_shape", 0) < m0.op_counts()["constant_of_shape"]
    for op in m1.walk():
        if op.name == "constant_of_shape":  # left because folding would grow the model
            assert op.results[0].type.numel * 4 > GROWTH_FLOOR_BYTES
    for gone in ("identity", "dropout"):
        assert counts.get(gone, 0) == 0, f"{gone} left after O1"
    m2 = gx.optimize(m0, level=2, target="cpu")
    gx.save(m2, tmp_path / "m.gxm")
    # about the .onnx file's size (was 102 MB for the 80 KB ResNet-50 at O2)
    assert os.path.getsize(tmp_path / "m.gxm") < 8 * os.path.getsize(zoo.model_path(name)) + (64 << 10)
    assert m1.num_ops < m0.num_ops
    feeds = zoo.dummy_inputs(proto)
    want = gx.compile(m0, target="numpy", level=0).run(feeds)
    got = gx.compile(m1, target="numpy", level=0).run(feeds)
    rtol, atol = zoo.MODELS[name]
    for n in want:
        np.testing.assert_allclose(got[n], want[n], rtol=rtol, atol=atol)
