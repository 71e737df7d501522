"""The IR core: builder, mutation API, print/parse round trips, clone, and the verifier's
errors on malformed graphs."""
import numpy as np
import pytest

import galaxir as gx
from galaxir import errors
from galaxir.ir import (Builder, DType, Graph, GraphBuilder, Module, Operation, SequenceType, OptionalType, TensorType, parse, tensor, verify)
from galaxir.ir.types import UNKNOWN
from conftest import if_loop_module, small_module


def run(m, *args):
    return gx.compile(m, target="numpy", level=0)(*args)


def test_builder_infers_types_and_runs():
    m = small_module()
    out = m.graph.outputs[0]
    assert out.type == tensor("f32", "N", 4)
    x = np.random.rand(3, 4).astype(np.float32) - 0.5
    y = np.random.rand(1, 4).astype(np.float32) - 0.5
    (got,) = run(m, x, y)
    np.testing.assert_allclose(got, np.maximum(x + y, 0) * 3, rtol=1e-6)


def test_print_parse_round_trip_keeps_everything():
    m = small_module()
    big = np.random.rand(40, 30).astype(np.float32)
    b = Builder(m.graph.block)
    w = b.constant(big)
    m.graph.set_outputs(m.graph.outputs + [w], m.graph.output_names + ["w"])
    text = m.to_text()
    assert "resources {" in text and "dense_resource<f32[40,30]" in text
    m2 = parse(text)
    assert m2 == m
    assert m2.to_text() == text
    got = [op for op in m2.walk() if op.name == "constant" and op.attrs["value"].shape == (40, 30)]
    assert np.array_equal(got[0].attrs["value"], big)
    assert m2.metadata == {"producer": "test"}


def test_display_print_elides_and_parse_takes_resources_back():
    gb = GraphBuilder()
    arr = np.arange(1000, dtype=np.float32)
    gb.output(gb.constant(arr), "c")
    m = gb.module()
    short = str(m)
    assert "elided_4000_bytes" in short and len(short) < 500
    with pytest.raises(errors.ParseError, match=r"elided.*to_text\(\)"):
        parse(short)
    m2 = parse(short, resources={"elided_4000_bytes": arr})
    assert m2 == m


def test_attributes_of_every_kind_round_trip():
    """Each attribute value prints and parses back to an equal value of the same type."""
    attrs = {"i": -3, "f": 1e-5, "f2": float("inf"), "s": 'a "quoted"\nname', "b": True,
             "ints": (1, -2, 3), "floats": (0.5, -1.25), "strs": ("a", "b"), "empty": (),
             "dt": DType.bfloat16, "ty": TensorType(DType.int64, ("N", UNKNOWN, 3)),
             "t": np.array([[1, 2], [3, 4]], np.int32),
             "t_bf16": np.array([1.5, -2.0], dtype=DType.bfloat16.numpy),
             "t_str": np.array(["x", "y z"], dtype=object),
             "t_big": np.random.rand(50).astype(np.float64),
             "t_bool": np.array([True, False])}
    from galaxir.ir.parser import Parser
    from galaxir.ir.printer import Printer
    p = Printer()
    for k, v in attrs.items():
        text = p.attr(v, k)
        back = Parser(text + "\nresources {\n" + "".join(
            f"  {key}: 0x{arr.tobytes().hex()}\n" for key, arr in p.resources.items()) + "}\n").attr_value()
        if isinstance(v, np.ndarray):
            assert back.dtype == v.dtype and np.array_equal(back, v), k
        else:
            assert back == v and type(back) is type(v), k


def test_symbolic_and_odd_dims_print_and_parse():
    gb = GraphBuilder()
    x = gb.input("input:0", TensorType(DType.float32, ("batch size", UNKNOWN, 3)))
    y = gb.input("seq", SequenceType(tensor("i64", "N")))
    z = gb.input("maybe", OptionalType(TensorType(DType.float32, None)))
    gb.output(gb.relu(x), "out/0")
    gb.output(gb.identity(y), "s")
    gb.output(gb.identity(z), "o")
    m = gb.module()
    text = m.to_text()
    assert '%"input:0": f32["batch size",?,3]' in text
    m2 = parse(text)
    assert m2 == m
    assert m2.graph.input_names == ["input:0", "seq", "maybe"]
    assert m2.graph.output_names == ["out/0", "s", "o"]


def test_regions_round_trip_clone_and_run():
    m = if_loop_module()
    verify(m)
    text = m.to_text()
    assert text.count("^(") == 3
    assert parse(text) == m
    c = m.clone()
    assert c == m and c.graph is not m.graph
    x = np.array([1.0, 2.0], np.float32)
    (t,) = run(m, np.array(True), x)
    (f,) = run(m, np.array(False), x)
    np.testing.assert_allclose(t, x * 2 + 3 * x)
    np.testing.assert_allclose(f, x + 2 + 3 * x)


def test_clone_is_independent():
    m = small_module()
    c = m.clone()
    relu = next(op for op in c.walk() if op.name == "relu")
    relu.replace_with([relu.operands[0]])
    assert c != m
    assert any(op.name == "relu" for op in m.walk())
    verify(c)


def test_clone_shares_frozen_attrs_copied_on_write():
    """A clone takes its ops' frozen attributes as they are (no second freezing pass);
    setting one on the clone leaves the original's."""
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 2, 3))
    gb.output(gb.transpose(x, perm=[1, 0]), "y")
    m = gb.module()
    c = m.clone()
    src = next(op for op in m.walk() if op.name == "transpose")
    dup = next(op for op in c.walk() if op.name == "transpose")
    assert dup.attrs == src.attrs and dup.attr("perm") == (1, 0)
    dup.set_attr("perm", [0, 1])
    assert dup.attr("perm") == (0, 1) and src.attr("perm") == (1, 0)
    with pytest.raises(TypeError):
        dup.attrs["perm"] = (1, 0)  # read-only either way


def test_mutation_api_insert_erase_replace():
    m = small_module()
    block = m.graph.block
    add = next(op for op in block if op.name == "add")
    relu = next(op for op in block if op.name == "relu")
    b = Builder(block, before=relu)
    neg = b.op("neg", add.result)
    relu.set_operand(0, neg)
    assert [op.name for op in block] == ["constant", "add", "neg", "relu", "mul", "return"]
    assert (relu, 0) in neg.uses and not any(u is relu for u, _ in add.result.uses if u.name == "relu")
    with pytest.raises(ValueError, match="still used"):
        neg.producer.erase()
    relu.set_operand(0, add.result)
    neg.producer.erase()
    assert [op.name for op in block] == ["constant", "add", "relu", "mul", "return"]
    verify(m)
    # walk sees nested ops in order
    names = [op.name for op in if_loop_module().walk()]
    assert names.index("if") < names.index("mul") < names.index("loop") < len(names) - 1
    assert names[-1] == "return"


def test_iteration_survives_erasing_the_current_op():
    m = small_module()
    seen = []
    for op in m.graph.block:
        seen.append(op.name)
        if op.name == "relu":
            op.replace_with([op.operands[0]])
    assert seen == ["constant", "add", "relu", "mul", "return"]
    verify(m)


def test_custom_op_from_outside_the_package():
    from galaxir.ir import opdef
    from galaxir.backends.numpy import kernel
    opdef.define("test.scale_by", operands=["x"], attrs={"factor": opdef.attr("float", 1.0)},
                 infer=lambda op: [op.operand_types[0]], replace=True)
    kernel("test.scale_by")(lambda ctx, x: x * np.float32(ctx.attr("factor")))
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 3))
    gb.output(gb.op("test.scale_by", x, factor=2.5), "y")
    m = gb.module()
    assert '"test.scale_by"' not in m.to_text()  # dotted names print bare
    assert parse(m.to_text()) == m
    (y,) = run(m, np.ones(3, np.float32))
    np.testing.assert_allclose(y, 2.5)


# -- malformed graphs: each raises the right error naming the op -----------------------------
def _module_of(graph):
    return Module(graph)


def test_use_before_def():
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 2))
    a = gb.create("relu", x)
    bop = gb.create("neg", a.result)
    gb.graph.block.remove(a)
    gb.graph.block.append(a)  # now after its user (and after nothing else)
    gb.output(bop.result, "y")
    m = gb.module()
    with pytest.raises(errors.VerificationError, match=r"op 'neg'.*used before it is defined"):
        verify(m)


def test_wrong_operand_count():
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 2))
    with pytest.raises(errors.VerificationError, match=r"op 'add'.*takes 2 operands"):
        gb.create("add", x)
    op = Operation("add", [x], [tensor("f32", 2)])
    gb.graph.block.append(op)
    gb.output(op.result, "y")
    with pytest.raises(errors.VerificationError, match=r"op 'add'.*operands"):
        verify(gb.module())


def test_type_mismatch():
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 2))
    op = Operation("relu", [x], [tensor("i64", 2)])
    gb.insert(op)
    gb.output(op.result, "y")
    with pytest.raises(errors.VerificationError, match=r"op 'relu'.*declared i64\[2\].*f32\[2\]"):
        verify(gb.module())


def test_dangling_value_from_another_graph():
    other = GraphBuilder()
    foreign = other.input("z", tensor("f32", 2))
    gb = GraphBuilder()
    op = Operation("relu", [foreign], [tensor("f32", 2)])
    gb.insert(op)
    gb.output(op.result, "y")
    with pytest.raises(errors.VerificationError, match=r"op 'relu'.*not defined in this scope"):
        verify(gb.module())


def test_cycle():
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 2))
    a = Operation("add", [x, x], [tensor("f32", 2)])
    b = Operation("mul", [a.result, x], [tensor("f32", 2)])
    a.set_operand(1, b.result)
    gb.insert(a)
    gb.insert(b)
    gb.output(b.result, "y")
    with pytest.raises(errors.VerificationError, match=r"op 'add'.*cycle"):
        verify(gb.module())


def test_bad_region_signature():
    gb = GraphBuilder()
    c = gb.input("c", tensor("bool"))
    x = gb.input("x", tensor("f32", 2))
    then_r = gb.region(body=lambda b: [b.relu(x), b.relu(x)])
    else_r = gb.region(body=lambda b: [b.relu(x)])
    op = Operation("if", [c], [tensor("f32", 2), tensor("f32", 2)], regions=[then_r, else_r])
    gb.insert(op)
    gb.output(op.results[0], "y")
    with pytest.raises(errors.VerificationError, match=r"op 'if'.*branch 1 returns 1 values, expected 2"):
        verify(gb.module())


def test_unknown_op():
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", 2))
    with pytest.raises(errors.UnsupportedOpError, match="unknown op 'frobnicate'"):
        gb.op("frobnicate", x, num_results=1)
    op = Operation("frobnicate", [x], [tensor("f32", 2)])
    gb.insert(op)
    gb.output(op.result, "y")
    with pytest.raises(errors.VerificationError, match="op 'frobnicate'.*unknown op"):
        verify(gb.module())


def test_bad_attribute_type():
    gb = GraphBuilder()
    x = gb.input("x", tensor("i64", 2))
    with pytest.raises(errors.VerificationError, match=r"op 'bit_shift'.*attribute 'direction' must be str"):
        gb.op("bit_shift", x, x, direction=3)
    with pytest.raises(errors.VerificationError, match=r"op 'bit_shift'.*required attribute 'direction'"):
        gb.op("bit_shift", x, x)


def test_duplicate_names():
    g = Graph()
    g.add_input("x", tensor("f32", 2))
    g.add_input("x", tensor("f32", 2))
    g.set_outputs([g.inputs[0]], ["y"])
    with pytest.raises(errors.VerificationError, match="input name 'x' is used twice"):
        verify(Module(g))
    g2 = Graph()
    v = g2.add_input("x", tensor("f32", 2))
    g2.set_outputs([v, v], ["y", "y"])
    with pytest.raises(errors.VerificationError, match="output name 'y' is used twice"):
        verify(Module(g2))


def test_output_not_defined():
    g = Graph()
    g.add_input("x", tensor("f32", 2))
    g.set_outputs([None], ["y"])
    with pytest.raises(errors.VerificationError, match="output 'y' is not defined"):
        verify(Module(g))


def test_missing_return():
    g = Graph()
    g.add_input("x", tensor("f32", 2))
    with pytest.raises(errors.VerificationError, match="does not end with a return"):
        verify(Module(g))


def test_parse_errors_name_line_and_column():
    with pytest.raises(errors.ParseError, match=r"line 3, column 15: use of undefined value %y"):
        parse("module @m {\nfunc @main(%x: f32[2]) -> (o: f32[2]) {\n  %0 = relu(%y) : (f32[2])\n  return %0\n}\n}\n")
    with pytest.raises(errors.ParseError, match="unknown op 'nope'"):
        parse("module @m {\nfunc @main(%x: f32[2]) -> (o: f32[2]) {\n  %0 = nope(%x) : (f32[2])\n  return %0\n}\n}\n")
    with pytest.raises(errors.ParseError, match="unknown type 'f33'"):
        parse("module @m {\nfunc @main(%x: f33[2]) -> (o: f32[2]) {\n  return %x\n}\n}\n")
