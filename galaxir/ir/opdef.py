"""Op definitions: each op is declared once, with its operands, attributes, result count,
type inference and verifier, in a registry users can extend from outside the package.

    from galaxir.ir import opdef, TensorType
    opdef.define("my.scale", operands=["x"], attrs={"factor": opdef.attr("float", 1.0)},
                 infer=lambda op: [op.operand_types[0]])

Operand element types are declared too, as ONNX does with type constraints: ``types`` maps an
operand name to a type variable (operands naming the same variable must share one dtype), a
set of allowed dtypes, or both as ``(variable, set)``:

    opdef.define("my.lookup", operands=["table", "indices", "default?"],
                 types={"table": "T", "default": "T", "indices": opdef.INDEX})

The verifier (and the builder, when it infers result types) checks them before type
inference runs, so kernels never see operands of mixed or unexpected dtypes.

Properties passes and backends ask about (pure, commutative, elementwise, view, ...) are
declared as traits (galaxir/ir/traits.py): ``define("my.add", ..., traits=[Commutative()])``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ..errors import ShapeInferenceError, VerificationError
from .traits import OpTrait, Pure
from .types import DType, TensorType, Type, fits_in_memory

if TYPE_CHECKING:
    from .core import Operation

ATTR_KINDS = ("int", "float", "str", "bool", "ints", "floats", "strs", "tensor", "dtype",
              "type", "any")


@dataclass(frozen=True)
class AttrSpec:
    kind: str
    default: Any = None
    required: bool = False

    def check(self, value: Any) -> bool:
        k = self.kind
        if k == "any":
            return True
        if k == "int":
            return isinstance(value, int) and not isinstance(value, bool)
        if k == "float":
            return isinstance(value, (float, int)) and not isinstance(value, bool)
        if k == "str":
            return isinstance(value, str)
        if k == "bool":
            return isinstance(value, bool)
        if k == "ints":
            return isinstance(value, tuple) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        if k == "floats":
            return isinstance(value, tuple) and all(isinstance(v, (int, float)) for v in value)
        if k == "strs":
            return isinstance(value, tuple) and all(isinstance(v, str) for v in value)
        if k == "tensor":
            return isinstance(value, np.ndarray)
        if k == "dtype":
            return isinstance(value, DType)
        if k == "type":
            return isinstance(value, Type)
        return False


def attr(kind: str, default: Any = None, required: bool = False) -> AttrSpec:
    if kind not in ATTR_KINDS:
        raise ValueError(f"unknown attribute kind {kind!r}; one of {ATTR_KINDS}")
    return AttrSpec(kind, default, required)


InferFn = Callable[["Operation"], "list[Type]"]

#: dtype sets for ``types=`` declarations (the ONNX type-constraint sets galaxir uses)
INDEX = frozenset({DType.int32, DType.int64})
INT64 = frozenset({DType.int64})
INT32 = frozenset({DType.int32})
BOOL = frozenset({DType.bool})
FLOAT32 = frozenset({DType.float32})
FLOATS = frozenset({DType.float16, DType.float32, DType.float64, DType.bfloat16})

#: one ``types`` entry: a type variable, an allowed dtype set, or both
TypeRule = Any


def _dtype_names(allowed) -> str:
    names = sorted(d.name for d in allowed)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def _split_rule(op_name: str, operand: str, rule: TypeRule) -> tuple[str | None, frozenset | None]:
    """A ``types`` entry as (type variable, allowed dtypes), each possibly None."""
    if isinstance(rule, str):
        return rule, None
    if isinstance(rule, (set, frozenset)) and all(isinstance(d, DType) for d in rule) and rule:
        return None, frozenset(rule)
    if isinstance(rule, tuple) and len(rule) == 2 and isinstance(rule[0], str):
        return rule[0], _split_rule(op_name, operand, rule[1])[1]
    raise ValueError(f"op {op_name!r}: types[{operand!r}] must be a type variable name, a set of "
                     f"DTypes or (variable, set), got {rule!r}")


@dataclass
class OpDef:
    """What an op is: its signature, type rules, verifier and (for composites) decomposition.

    ``operands`` lists names; a trailing ``?`` marks an optional operand (may be None), a
    trailing ``*`` a variadic tail.  ``num_results`` is an int, or None when the op says
    how many results it has at creation (e.g. split).  ``regions`` is how many regions.
    ``decompose(builder, op) -> list[Value]`` rewrites a composite op into core ops.
    ``traits``: OpTrait objects (galaxir/ir/traits.py); ``Pure`` is added unless ``pure`` is
    False, so ``pure`` and ``has_trait(Pure)`` always agree.
    """

    name: str
    operands: tuple[str, ...] = ()
    attrs: dict[str, AttrSpec] = field(default_factory=dict)
    infer: InferFn | None = None
    num_results: int | None = 1
    regions: int = 0
    verify: Callable[["Operation"], None] | None = None
    decompose: Callable | None = None
    pure: bool = True
    doc: str = ""
    types: dict[str, TypeRule] = field(default_factory=dict)
    traits: frozenset = frozenset()

    def __post_init__(self) -> None:
        self._set_traits()
        names = [o.rstrip("?*") for o in self.operands]
        rules = []
        for operand, rule in self.types.items():
            if operand not in names:
                raise ValueError(f"op {self.name!r}: types names operand {operand!r}, which is not "
                                 f"one of {names}")
            var, allowed = _split_rule(self.name, operand, rule)
            i = names.index(operand)
            rules.append((i, self.operands[i].endswith("*"), operand, var, allowed))
        self._type_rules = tuple(sorted(rules))

    def _set_traits(self) -> None:
        given = []
        for t in self.traits:
            if isinstance(t, type) and issubclass(t, OpTrait):
                t = t()  # a trait class without parameters stands for its instance
            if not isinstance(t, OpTrait):
                raise ValueError(f"op {self.name!r}: traits must be OpTrait objects "
                                 f"(galaxir.ir.traits), got {t!r}")
            given.append(t)
        if any(isinstance(t, Pure) for t in given) and not self.pure:
            raise ValueError(f"op {self.name!r} is declared pure=False and with the Pure trait")
        if self.pure and not any(isinstance(t, Pure) for t in given):
            given.append(Pure())
        by_class: dict[type, OpTrait] = {}
        for t in given:
            if type(t) in by_class and by_class[type(t)] != t:
                raise ValueError(f"op {self.name!r}: two {type(t).__name__} traits "
                                 f"({by_class[type(t)]!r} and {t!r})")
            by_class[type(t)] = t
        self.traits = frozenset(given)
        self._by_class = by_class

    def trait(self, cls: type) -> OpTrait | None:
        """The op's trait of class ``cls`` (or a subclass of it), or None."""
        t = self._by_class.get(cls)
        if t is None:
            t = next((x for x in self.traits if isinstance(x, cls)), None)
        return t

    def has_trait(self, cls: type) -> bool:
        return self.trait(cls) is not None

    def check_operand_types(self, op: "Operation") -> None:
        """Raise ShapeInferenceError naming the op, operand and dtypes when an operand's
        element type breaks the declared ``types`` (non-tensor and unknown operands pass)."""
        if not self._type_rules:
            return
        operands = op.operands
        bound: dict[str, tuple[DType, int, str]] = {}
        for first, variadic, name, var, allowed in self._type_rules:
            for i in range(first, len(operands) if variadic else min(first + 1, len(operands))):
                v = operands[i]
                t = None if v is None else v.type
                if not isinstance(t, TensorType):
                    continue
                if allowed is not None and t.dtype not in allowed:
                    raise ShapeInferenceError(
                        f"{describe(op)}: {name} (operand {i}) must be {_dtype_names(allowed)}, "
                        f"got {t}")
                if var is None:
                    continue
                seen = bound.get(var)
                if seen is None:
                    bound[var] = (t.dtype, i, name)
                elif seen[0] is not t.dtype:
                    peers = [n for _, _, n, w, _ in self._type_rules if w == var]
                    raise ShapeInferenceError(
                        f"{describe(op)}: {name} (operand {i}) is {t.dtype.name} but {seen[2]} "
                        f"(operand {seen[1]}) is {seen[0].name}: {', '.join(peers)} must share "
                        "one element type")

    @property
    def min_operands(self) -> int:
        return sum(1 for o in self.operands if not o.endswith(("?", "*")))

    @property
    def max_operands(self) -> int | None:
        if any(o.endswith("*") for o in self.operands):
            return None
        return len(self.operands)

    @property
    def is_composite(self) -> bool:
        return self.decompose is not None

    def infer_types(self, op: "Operation") -> list[Type] | None:
        """Result types by the op's rule, after its operand dtypes are checked."""
        self.check_operand_types(op)
        if self.infer is None:
            return None
        try:
            types = list(self.infer(op))
        except (ShapeInferenceError, VerificationError):
            raise
        except Exception as e:  # a rule that crashed on odd input: name the op
            raise ShapeInferenceError(f"{describe(op)}: type inference failed: {e}") from e
        for i, t in enumerate(types):
            if not fits_in_memory(t):
                raise ShapeInferenceError(f"{describe(op)}: result {i} would be {t}: no array can "
                                          "have that shape (its dims multiply past 2^63 bytes)")
        return types


_REGISTRY: dict[str, OpDef] = {}


def register(od: OpDef, replace: bool = False) -> OpDef:
    if od.name in _REGISTRY and not replace:
        raise ValueError(f"op {od.name!r} is already defined")
    _REGISTRY[od.name] = od
    return od


def define(name: str, operands=(), attrs=None, infer=None, num_results=1, regions=0,
           verify=None, decompose=None, pure=True, doc="", replace=False, types=None,
           traits=()) -> OpDef:
    """Declare an op and register it; returns its OpDef."""
    return register(OpDef(name, tuple(operands), dict(attrs or {}), infer, num_results, regions,
                          verify, decompose, pure, doc, dict(types or {}), frozenset(traits)),
                    replace=replace)


def lookup(name: str) -> OpDef | None:
    _ensure_loaded()
    return _REGISTRY.get(name)


def all_ops() -> dict[str, OpDef]:
    _ensure_loaded()
    return dict(_REGISTRY)


_loaded = False


def _ensure_loaded() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        from . import ops  # noqa: F401  (registers the built-in op set)


def describe(op: "Operation") -> str:
    """How error messages name an op: kind, position in its block, and source node."""
    pos = "?"
    if op.parent is not None:
        for i, o in enumerate(op.parent):
            if o is op:
                pos = str(i)
                break
    src = f" (from {', '.join(op.provenance)})" if op.provenance else ""
    depth = sum(1 for _ in op.ancestors)
    nest = f" in a region nested {depth} deep" if depth else ""
    return f"op '{op.name}' #{pos}{nest}{src}"
