"""Op traits (galaxir/ir/traits.py): declared once on the op definitions, they replace the
op-name sets passes kept (IMPURE, COMMUTATIVE, three ELEMENTWISE sets, INPLACE_OPS, VIEW_OPS,
ALIAS_OPS, GROWING, NO_FOLD, LAYOUT_OPS).  Each trait is checked against the set it replaced
and by what it changes in a pass, on ops defined here from outside the package too."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import galaxir as gx
from galaxir.ir import GraphBuilder, opdef, tensor
from galaxir.ir.opdef import define
from galaxir.ir.traits import (Commutative, ConstantLike, Elementwise, InPlace, LayoutAttr,
                               OpTrait, Pure, ShapeOnly, SizeFromValues, View,
                               ops_with)
from galaxir.passes import P, Const, Var, apply_patterns_greedily, optimize, pattern
from galaxir.passes.fusion import FuseElementwise
from galaxir.reference import get_kernel, kernel
from galaxir.reference.registry import KERNELS

RNG = np.random.default_rng(0)

# The sets the traits replaced, as they were (minus names no op has: silu, cast_like,
# upsample).  A trait that loses an op the old set had is a behaviour change.
OLD_FUSIBLE = {"abs", "neg", "exp", "log", "sqrt", "reciprocal", "floor", "ceil", "round",
               "sign", "sin", "cos", "tan", "asin", "acos", "atan", "sinh", "cosh", "tanh",
               "asinh", "acosh", "atanh", "erf", "relu", "sigmoid", "leaky_relu",
               "hard_sigmoid", "hard_swish", "gelu", "elu", "selu", "celu", "softplus",
               "softsign", "mish", "swish", "thresholded_relu", "shrink", "add", "sub", "mul",
               "div", "pow", "max", "min", "prelu", "fused_add", "where", "clip"}
OLD_LAYOUT_ELEMENTWISE = {
    "add", "sub", "mul", "div", "pow", "neg", "relu", "max", "min", "sum", "mean", "abs", "sqrt",
    "reciprocal", "exp", "log", "sigmoid", "tanh", "leaky_relu", "clip", "floor", "ceil", "elu",
    "selu", "softplus", "softsign", "hard_sigmoid", "hard_swish", "erf", "gelu", "mish",
    "prelu", "celu", "sin", "cos", "sign", "round", "thresholded_relu", "fused_add", "where",
    "equal", "less", "greater", "less_or_equal", "greater_or_equal", "and", "or", "xor", "not",
    "cast", "identity", "dropout", "mod", "bit_shift", "isnan", "isinf"}
OLD_INPLACE = {"add", "sub", "mul", "div", "neg", "relu", "max", "min", "sum", "mean", "abs",
               "sqrt", "reciprocal", "exp", "log", "sigmoid", "tanh", "leaky_relu", "clip",
               "floor", "ceil", "elu", "selu", "softplus", "hard_sigmoid", "hard_swish", "erf",
               "pow", "sin", "cos", "sign", "round", "prelu", "where", "fused_elementwise",
               "gelu", "mish", "softsign", "celu", "thresholded_relu"}
OLD_COMMUTATIVE = {"add", "mul", "max", "min", "sum", "mean", "and", "or", "xor", "equal",
                   "bitwise_and", "bitwise_or", "bitwise_xor"}
OLD_IMPURE = {"random_normal", "random_uniform", "random_normal_like", "random_uniform_like",
              "multinomial", "bernoulli", "return"}
OLD_GROWING = {"range", "constant_of_shape", "expand", "tile", "resize", "pad", "one_hot",
               "eye_like", "non_zero", "unique", "compress", "string_split", "split_to_sequence"}
OLD_LAYOUT_OPS = {"conv", "fused_conv", "max_pool", "average_pool", "global_average_pool",
                  "global_max_pool", "lrn"}
OLD_VIEW = {"reshape", "flatten", "squeeze", "unsqueeze", "identity"}


@pytest.fixture(scope="module")
def builtin():
    """``ops_with`` over the built-in ops only (other tests and the docs define ops of their
    own in this process): the names a fresh interpreter registers."""
    code = "from galaxir.ir import opdef; print(' '.join(sorted(opdef.all_ops())))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120, cwd=Path(gx.__file__).parent.parent)
    names = frozenset(r.stdout.split())
    assert "add" in names, r.stderr

    def with_trait(cls, where=None):
        return ops_with(cls, where) & names
    with_trait.names = names
    return with_trait


def test_traits_hold_exactly_the_old_sets(builtin):
    assert builtin(Elementwise, lambda t: t.fusible) == OLD_FUSIBLE
    assert builtin(Commutative) == OLD_COMMUTATIVE
    assert builtin.names - builtin(Pure) == OLD_IMPURE
    assert builtin(SizeFromValues) == OLD_GROWING
    assert builtin(LayoutAttr) == OLD_LAYOUT_OPS
    assert builtin(ConstantLike) == {"constant"}
    assert builtin(View, lambda t: t.kind != "inference") == OLD_VIEW
    assert builtin(View) == OLD_VIEW | {"dropout"}
    assert builtin(View, lambda t: t.kind == "reshape") == OLD_VIEW - {"identity"}
    assert builtin(ShapeOnly) == {"reshape", "expand", "squeeze", "unsqueeze", "flatten", "tile"}


def test_traits_grew_only_where_documented(builtin):
    """The layout pass and the memory planner now cover every op of the trait: the old hand
    lists had missed these (docs/passes.md)."""
    assert OLD_LAYOUT_ELEMENTWISE <= builtin(Elementwise)
    assert builtin(Elementwise) - OLD_LAYOUT_ELEMENTWISE == {
        "tan", "asin", "acos", "atan", "sinh", "cosh", "asinh", "acosh", "atanh", "shrink",
        "swish", "bitwise_not", "bitwise_and", "bitwise_or", "bitwise_xor", "bit_cast",
        "ml.binarizer", "fused_elementwise"}
    assert OLD_INPLACE <= builtin(InPlace)
    assert builtin(InPlace) == OLD_FUSIBLE | {"sum", "mean", "fused_elementwise"}


def test_every_onnx_elementwise_op_has_the_trait():
    from galaxir.frontends.onnx.ops import elementwise as onnx_ew
    for table, kinds in ((onnx_ew.UNARY, {"unary"}), (onnx_ew.BINARY, {"binary"}),
                         (onnx_ew.VARIADIC, {"variadic"})):
        for onnx_name, name in table.items():
            t = opdef.lookup(name).trait(Elementwise)
            assert t is not None and t.kind in kinds, (onnx_name, name, t)


def test_pure_agrees_with_opdef_pure():
    for name, od in opdef.all_ops().items():
        assert od.pure == od.has_trait(Pure), name


def test_cpu_capabilities_derive_from_traits(builtin):
    lower = pytest.importorskip("galaxir.backends.cpu.lower")
    assert lower.ALIAS_OPS & builtin.names == builtin(View)
    # what the cpu codegen lowers elementwise is its own list, but each is an Elementwise op
    assert set(lower.ELEMENTWISE) <= ops_with(Elementwise)


def test_trait_declarations_are_checked():
    with pytest.raises(ValueError, match="OpTrait"):
        opdef.OpDef("t.bad", traits=frozenset({"commutative"}))
    with pytest.raises(ValueError, match="pure=False"):
        opdef.OpDef("t.bad", pure=False, traits=frozenset({Pure()}))
    with pytest.raises(ValueError, match="kind"):
        Elementwise("ternary")
    with pytest.raises(ValueError, match="kind"):
        View("copy")
    with pytest.raises(ValueError, match="two Elementwise"):
        opdef.OpDef("t.bad", traits=frozenset({Elementwise("unary"), Elementwise("binary")}))
    od = opdef.OpDef("t.ok", traits=frozenset({Commutative}))  # a class stands for its instance
    assert od.has_trait(Commutative) and od.has_trait(Pure) and od.has_trait(OpTrait)
    assert od.trait(Elementwise) is None


# -- ops defined here, from outside the package ---------------------------------------------------
@pytest.fixture
def user_ops():
    """Defines ``t.<name>`` ops with the given traits and a numpy kernel; removes them after."""
    made = []

    def make(name, fn, operands=("a", "b"), **kw):
        full = f"t.{name}"
        define(full, operands=list(operands), replace=True,
               infer=lambda op: [op.operand_types[0]], **kw)
        kernel(full)(lambda ctx, *xs: fn(*xs))
        made.append(full)
        return full

    yield make
    for name in made:
        opdef._REGISTRY.pop(name, None)
        KERNELS.pop(name, None)


def _two_input_module(name, x_first=True, const=None):
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 4))
    c = gb.constant(np.float32([1, 2, 3, 4]) if const is None else const)
    gb.output(gb.op(name, *((x, c) if x_first else (c, x))), "y")
    return gb.module()


def test_commutative_trait_lets_a_pattern_match_both_orders(user_ops):
    comm = user_ops("cadd", np.add, traits=[Commutative()])
    plain = user_ops("psub", np.subtract)
    hits = []

    @pattern(P.any_of(comm, plain)(Var("x"), Const()), name="t-hit")
    def hit(m):
        hits.append(m.root.name)
        return m.fail("only counting")

    for name in (comm, plain):
        for x_first in (True, False):
            apply_patterns_greedily(_two_input_module(name, x_first), [hit])
    # the commutative op matches with the constant first or second; the other only second
    assert hits.count(comm) == 2 and hits.count(plain) == 1


def test_builtin_commutative_canonicalization():
    """``mul`` carries Commutative: the O1 ``x * 1 -> x`` rule removes ``1 * x``, while
    ``1 - x`` (sub is not commutative) is left alone."""
    for op, gone in (("mul", True), ("sub", False)):
        gb = GraphBuilder()
        x = gb.input("x", tensor("f32", 3))
        one = gb.constant(np.ones(3, np.float32) if op == "mul" else np.zeros(3, np.float32))
        gb.output(gb.relu(gb.op(op, one, x)), "y")
        m = optimize(gb.module(), level=1)
        assert (op not in m.op_counts()) == gone, m.op_counts()


def test_fold_respects_purity(user_ops):
    pure = user_ops("pure_add", np.add)
    impure = user_ops("impure_add", np.add, pure=False)
    for name, folds in ((pure, True), (impure, False)):
        gb = GraphBuilder()
        x = gb.input("x", tensor("f32", 4))
        a = gb.op(name, gb.constant(np.ones(4, np.float32)), gb.constant(np.ones(4, np.float32)))
        b = gb.op(name, gb.constant(np.ones(4, np.float32)), gb.constant(np.ones(4, np.float32)))
        gb.op(name, gb.constant(np.ones(4, np.float32)), gb.constant(np.ones(4, np.float32)))
        gb.output(gb.add(gb.add(x, a), b), "y")
        m = gb.module()
        m = optimize(m, pipeline="fold-constants,cse,dce")
        n = m.op_counts().get(name, 0)
        # folded (and the unused one erased), or kept: all three, neither merged nor erased
        assert n == (0 if folds else 3), (name, m.op_counts())


def test_builtin_random_ops_are_not_folded():
    gb = GraphBuilder()
    like = gb.constant(np.zeros((2, 2), np.float32))
    r = gb.random_uniform_like(like, seed=1.0)
    gb.output(gb.add(r, gb.random_uniform_like(like, seed=1.0)), "y")
    m = optimize(gb.module(), level=1)
    assert m.op_counts().get("random_uniform_like") == 2


def test_elementwise_fusible_trait_lets_a_user_op_join_a_fused_loop(user_ops):
    mine = user_ops("softsq", lambda a: a * a / (1 + a * a), operands=("x",),
                    traits=[Elementwise("unary", fusible=True)])
    other = user_ops("notfused", lambda a: a * a, operands=("x",), traits=[Elementwise("unary")])
    for name, joins in ((mine, True), (other, False)):
        gb = GraphBuilder()
        x = gb.input("x", tensor("f32", 5))
        gb.output(gb.relu(gb.op(name, gb.exp(x))), "y")
        m = gb.module()
        out = m.clone()
        apply_patterns_greedily(out, [FuseElementwise()])
        counts = {op.name: 1 for op in out.graph.block}
        inside = [op.name for fe in out.walk() if fe.name == "fused_elementwise"
                  for op in fe.regions[0].block]
        assert (name in inside) == joins and (counts.get(name, 0) == 0) == joins, counts
        xv = RNG.standard_normal(5).astype(np.float32)
        ref = gx.compile(m, target="numpy", level=0)(xv)[0]
        got = gx.compile(out, target="numpy", level=0)(xv)[0]
        np.testing.assert_allclose(got, ref, rtol=1e-6)


def test_layout_pushes_transposes_through_every_elementwise_op():
    """tan was missing from the layout pass's old list: conv -> tan -> conv left a transpose
    pair between the convs; with the trait the NHWC chain has none."""
    from galaxir.passes.layout import interior_transposes
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 1, 3, 6, 6))
    w1 = gb.constant((RNG.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32))
    w2 = gb.constant((RNG.standard_normal((4, 4, 3, 3)) * 0.3).astype(np.float32))
    y = gb.tan(gb.conv(x, w1, pads=[1, 1, 1, 1]))
    gb.output(gb.conv(y, w2, pads=[1, 1, 1, 1]), "y")
    m = gb.module()
    m3 = gx.optimize(m, level=3, target="numpy", layout="NHWC")
    assert interior_transposes(m3) == [], str(m3)
    xv = RNG.standard_normal((1, 3, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(gx.compile(m3, target="numpy", level=0)(xv)[0],
                               gx.compile(m, target="numpy", level=0)(xv)[0], rtol=1e-4,
                               atol=1e-5)


def test_memory_planner_reads_view_and_inplace():
    from galaxir.passes.memory import schedule_of
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 2, 8))
    e = gb.exp(x)
    r = gb.reshape(e, gb.constant(np.int64([16])))
    d, _ = gb.dropout(r, num_results=2)
    gb.output(gb.tan(gb.relu(d)), "y")
    steps, sizes, aliases, _, _ = schedule_of(gb.module())
    by_name = {s.name: s for s in steps}
    assert len(aliases) == 1                       # reshape (View) aliases exp's buffer
    assert by_name["reshape"].defs == ()
    assert by_name["dropout"].defs                 # dropout's view needs checks: a new buffer
    assert by_name["relu"].inplace and by_name["tan"].inplace  # InPlace


def test_shape_only_ops_with_an_unchanged_shape_are_removed():
    """simplify's remove-noop rules cover the ShapeOnly ops: a tile by ones disappears at
    O1, a transpose to the same shape (not ShapeOnly: it moves elements) stays."""
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 2, 3, 3))
    t = gb.tile(x, gb.constant(np.int64([1, 1, 1])))
    p = gb.transpose(t, perm=[0, 2, 1])
    gb.output(gb.relu(p), "y")
    m = optimize(gb.module(), level=1)
    assert "tile" not in m.op_counts() and m.op_counts().get("transpose") == 1, m.op_counts()


def test_fold_checks_size_from_values_ops_have_a_static_result():
    """range's result size comes from its operand values: with its result type unknown the
    fold leaves it, with it static the fold evaluates it."""
    for static in (False, True):
        gb = GraphBuilder()
        r = gb.range(gb.constant(np.int64(0)), gb.constant(np.int64(5)), gb.constant(np.int64(1)))
        if not static:
            r.type = tensor("i64", "N")
        gb.output(r, "y")
        m = gb.module()
        m = optimize(m, pipeline="fold-constants")
        assert ("range" in m.op_counts()) != static, m.op_counts()
        assert get_kernel("range") is not None
