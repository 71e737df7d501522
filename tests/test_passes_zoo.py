"""O1 on the 9 light zoo models: every ConstantOfShape weight folds to a constant, no
identity or dropout remains, fewer ops, and the outputs equal the unoptimized module's."""
import numpy as np
import onnx
import pytest

import galaxir as gx
from galaxir.testing import zoo

SLOW = {"densenet121", "vgg19", "inception_v2"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                  for n in sorted(zoo.MODELS)])
def test_o1_folds_weights_and_keeps_outputs(name):
    proto = onnx.load(str(zoo.model_path(name)))
    m0 = gx.import_model(proto)
    m1 = gx.optimize(m0, level=1)
    counts = m1.op_counts()
    assert m0.op_counts().get("constant_of_shape", 0) > 0
    for gone in ("constant_of_shape", "identity", "dropout"):
        assert counts.get(gone, 0) == 0, f"{gone} left after O1"
    assert m1.num_ops < m0.num_ops
    feeds = zoo.dummy_inputs(proto)
    want = gx.compile(m0, target="numpy", level=0).run(feeds)
    got = gx.compile(m1, target="numpy", level=0).run(feeds)
    rtol, atol = zoo.MODELS[name]
    for n in want:
        np.testing.assert_allclose(got[n], want[n], rtol=rtol, atol=atol)
