"""Reads the textual form written by ``printer`` back into a Module."""
from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

from ..errors import ParseError
from .builder import check_signature
from .core import MAX_NESTING, Block, Graph, Module, Operation, Region, Value
from .types import (UNKNOWN, AnyType, DType, MapType, OptionalType, SequenceType, TensorType,
                    Type)

_TOKEN = re.compile(r"""
    (?P<ws>\s+|//[^\n]*)
  | (?P<value>%(?:"(?:[^"\\]|\\.)*"|[A-Za-z0-9_.]+))
  | (?P<sym>@(?:"(?:[^"\\]|\\.)*"|[A-Za-z0-9_.]+))
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<hex>0x[0-9a-fA-F]*)
  | (?P<number>[-+]?(?:\d+\.\d*(?:[eE][-+]?\d+)?|\d+[eE][-+]?\d+|\.\d+(?:[eE][-+]?\d+)?|\d+)|-inf)
  | (?P<arrow>->)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<punct>[()\[\]{}<>,:=^*?])
""", re.VERBOSE)


class _Tokens:
    def __init__(self, text: str):
        self.text = text
        self.toks: list[tuple[str, str, int]] = []
        pos = 0
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if m is None:
                raise self._error(pos, f"unexpected character {text[pos]!r}")
            kind = m.lastgroup
            if kind != "ws":
                self.toks.append((kind, m.group(), pos))
            pos = m.end()
        self.i = 0

    def _error(self, pos: int, msg: str) -> ParseError:
        line = self.text.count("\n", 0, pos) + 1
        col = pos - (self.text.rfind("\n", 0, pos) + 1) + 1
        return ParseError(f"line {line}, column {col}: {msg}")

    def error(self, msg: str) -> ParseError:
        pos = self.toks[self.i][2] if self.i < len(self.toks) else len(self.text)
        return self._error(pos, msg)

    def peek(self, k: int = 0) -> tuple[str, str]:
        j = self.i + k
        if j >= len(self.toks):
            return ("eof", "")
        kind, text, _ = self.toks[j]
        return kind, text

    def next(self) -> tuple[str, str]:
        tok = self.peek()
        if tok[0] == "eof":
            raise self.error("unexpected end of input")
        self.i += 1
        return tok

    def accept(self, text: str) -> bool:
        if self.peek()[1] == text and self.peek()[0] != "string":
            self.i += 1
            return True
        return False

    def expect(self, text: str) -> None:
        if not self.accept(text):
            raise self.error(f"expected {text!r}, found {self.peek()[1]!r}")

    def expect_kind(self, kind: str) -> str:
        k, t = self.peek()
        if k != kind:
            raise self.error(f"expected {kind}, found {t!r}")
        self.i += 1
        return t


def _unquote(s: str) -> str:
    return json.loads(s) if s.startswith('"') else s


class Parser:
    def __init__(self, text: str, resources: dict[str, np.ndarray] | None = None):
        body, found = _split_resources(text)
        self.blobs = found
        self.external = resources or {}
        self.t = _Tokens(body)
        self.scopes: list[dict[str, Value]] = []

    def _nest(self, depth: int, what: str) -> int:
        """``depth + 1``, or a ParseError past galaxir's nesting limit (recursion stays bounded)."""
        if depth >= MAX_NESTING:
            raise self.t.error(f"{what} nest more than {MAX_NESTING} levels deep (galaxir's limit)")
        return depth + 1

    # -- types ---------------------------------------------------------------------------
    def type(self, depth: int = 0) -> Type:
        k, name = self.t.next()
        if name == "any":
            return AnyType()
        if name in ("seq", "opt"):
            self.t.expect("<")
            elem = self.type(self._nest(depth, "types"))
            self.t.expect(">")
            return SequenceType(elem) if name == "seq" else OptionalType(elem)
        if name == "map":
            self.t.expect("<")
            key = self._dtype(self.t.next()[1])
            self.t.expect(",")
            val = self.type(self._nest(depth, "types"))
            self.t.expect(">")
            return MapType(key, val)
        dtype = self._dtype(name)
        self.t.expect("[")
        if self.t.accept("*"):
            self.t.expect("]")
            return TensorType(dtype, None)
        dims: list = []
        while not self.t.accept("]"):
            if dims:
                self.t.expect(",")
            k, d = self.t.next()
            if k == "number":
                dims.append(int(d))
            elif d == "?":
                dims.append(UNKNOWN)
            elif k in ("ident", "string"):
                dims.append(_unquote(d))
            else:
                raise self.t.error(f"bad dim {d!r}")
        return TensorType(dtype, tuple(dims))

    def _dtype(self, name: str) -> DType:
        try:
            return DType.from_short(name)
        except ValueError:
            raise self.t.error(f"unknown type {name!r}") from None

    # -- attributes ----------------------------------------------------------------------
    def attr_value(self, depth: int = 0) -> Any:
        k, tok = self.t.peek()
        if k == "number" or tok in ("nan", "inf"):
            self.t.next()
            return _number(tok)
        if k == "string":
            self.t.next()
            return json.loads(tok)
        if tok in ("true", "false"):
            self.t.next()
            return tok == "true"
        if tok == "[":
            inner = self._nest(depth, "attribute lists")
            self.t.next()
            items = []
            while not self.t.accept("]"):
                if items:
                    self.t.expect(",")
                items.append(self.attr_value(inner))
            return tuple(items)
        if tok == "dtype":
            self.t.next()
            self.t.expect("<")
            d = self._dtype(self.t.next()[1])
            self.t.expect(">")
            return d
        if tok == "type":
            self.t.next()
            self.t.expect("<")
            ty = self.type()
            self.t.expect(">")
            return ty
        if tok in ("dense", "dense_resource"):
            return self.tensor()
        raise self.t.error(f"expected an attribute value, found {tok!r}")

    def tensor(self) -> np.ndarray:
        kind = self.t.next()[1]
        self.t.expect("<")
        ty = self.type()
        if not isinstance(ty, TensorType) or ty.shape is None or not ty.is_static:
            raise self.t.error(f"a tensor literal needs a static tensor type, got {ty}")
        self.t.expect(":")
        shape = ty.shape
        dt = ty.dtype
        if kind == "dense_resource":
            key = self.t.next()[1]
            self.t.expect(">")
            if key in self.external:
                arr = np.asarray(self.external[key])
            elif key in self.blobs:
                arr = _from_hex(self.blobs[key], dt, shape, self.t)
            else:
                raise self.t.error(f"resource {key!r} is not in the text's resources section "
                                   "(printed with resources=False?) nor in the resources given")
            return arr.reshape(shape)
        k, tok = self.t.peek()
        if k == "hex":
            self.t.next()
            self.t.expect(">")
            return _from_hex(tok[2:], dt, shape, self.t)
        self.t.expect("[")
        items = []
        while not self.t.accept("]"):
            if items:
                self.t.expect(",")
            if self.t.accept("("):
                re_ = _number(self.t.next()[1])
                self.t.expect(",")
                im = _number(self.t.next()[1])
                self.t.expect(")")
                items.append(complex(re_, im))
            else:
                items.append(self.attr_value())
        self.t.expect(">")
        n = int(np.prod(shape)) if shape else 1
        if len(items) != n:
            raise self.t.error(f"tensor literal has {len(items)} elements, type {ty} needs {n}")
        if dt is DType.string:
            arr = np.empty(n, dtype=object)
            arr[:] = items
            return arr.reshape(shape)
        if dt.is_float and dt.itemsize < 4:
            return np.array(items, dtype=np.float32).astype(dt.numpy).reshape(shape)
        return np.array(items, dtype=dt.numpy).reshape(shape)

    # -- values, ops, blocks -------------------------------------------------------------
    def lookup(self, name: str) -> Value:
        for scope in reversed(self.scopes):
            if name in scope:
                return scope[name]
        raise self.t.error(f"use of undefined value {name}")

    def bind(self, token: str, v: Value) -> None:
        if token in self.scopes[-1]:
            raise self.t.error(f"value {token} is defined twice")
        v.name = None if re.fullmatch(r"%\d+", token) else _unquote(token[1:])
        self.scopes[-1][token] = v

    def operand(self) -> Value | None:
        if self.t.accept("_"):
            return None
        return self.lookup(self.t.expect_kind("value"))

    def block_body(self, block: Block) -> None:
        while True:
            k, tok = self.t.peek()
            if tok == "}":
                return
            if tok == "return":
                self.t.next()
                vals = []
                if self.t.peek()[0] == "value" or self.t.peek()[1] == "_":
                    vals.append(self.operand())
                    while self.t.accept(","):
                        vals.append(self.operand())
                block.append(Operation("return", vals))
                continue
            block.append(self.op())

    def op(self) -> Operation:
        res_tokens = []
        if self.t.peek()[0] == "value":
            res_tokens.append(self.t.next()[1])
            while self.t.accept(","):
                res_tokens.append(self.t.expect_kind("value"))
            self.t.expect("=")
        k, name = self.t.next()
        if k not in ("ident", "string"):
            raise self.t.error(f"expected an op name, found {name!r}")
        name = _unquote(name)
        self.t.expect("(")
        operands = []
        while not self.t.accept(")"):
            if operands:
                self.t.expect(",")
            operands.append(self.operand())
        attrs = {}
        if self.t.accept("{"):
            while not self.t.accept("}"):
                if attrs:
                    self.t.expect(",")
                key = self.t.next()[1]
                self.t.expect("=")
                attrs[_unquote(key)] = self.attr_value()
        self.t.expect(":")
        self.t.expect("(")
        types = []
        while not self.t.accept(")"):
            if types:
                self.t.expect(",")
            types.append(self.type())
        if len(types) != len(res_tokens):
            raise self.t.error(f"op '{name}' has {len(res_tokens)} results but {len(types)} types")
        provenance, created_by = (), None
        if self.t.accept("loc"):
            self.t.expect("(")
            self.t.expect("[")
            prov = []
            while not self.t.accept("]"):
                if prov:
                    self.t.expect(",")
                prov.append(json.loads(self.t.expect_kind("string")))
            provenance = tuple(prov)
            if self.t.accept(","):
                created_by = json.loads(self.t.expect_kind("string"))
            self.t.expect(")")
        regions = []
        if self.t.peek()[1] == "(" and self.t.peek(1)[1] == "{":
            self.t.expect("(")
            while True:
                regions.append(self.region())
                if not self.t.accept(","):
                    break
            self.t.expect(")")
        op = Operation(name, operands, types, attrs, regions, provenance=provenance,
                       created_by=created_by)
        try:
            check_signature(op)
        except Exception as e:
            raise self.t.error(str(e)) from None
        for tok, r in zip(res_tokens, op.results):
            self.bind(tok, r)
        return op

    def region(self) -> Region:
        self._nest(len(self.scopes) - 1, "regions")  # scopes: the graph's, then one per region
        self.t.expect("{")
        self.t.expect("^")
        self.t.expect("(")
        block = Block()
        self.scopes.append({})
        while not self.t.accept(")"):
            if block.args:
                self.t.expect(",")
            tok = self.t.expect_kind("value")
            self.t.expect(":")
            self.bind(tok, block.add_arg(self.type()))
        self.block_body(block)
        self.t.expect("}")
        self.scopes.pop()
        return Region(block)

    def module(self) -> Module:
        t = self.t
        t.expect("module")
        name = _unquote(t.expect_kind("sym")[1:])
        meta = {}
        if t.peek()[1] == "{" and t.peek(1)[0] == "string":
            t.expect("{")
            while not t.accept("}"):
                if meta:
                    t.expect(",")
                key = json.loads(t.expect_kind("string"))
                t.expect("=")
                meta[key] = json.loads(t.expect_kind("string"))
        t.expect("{")
        t.expect("func")
        t.expect_kind("sym")
        t.expect("(")
        graph = Graph()
        self.scopes.append({})
        while not t.accept(")"):
            if graph.inputs:
                t.expect(",")
            tok = t.expect_kind("value")
            t.expect(":")
            self.bind(tok, graph.add_input("", self.type()))
        t.expect("->")
        t.expect("(")
        out_names = []
        while not t.accept(")"):
            if out_names:
                t.expect(",")
            out_names.append(_unquote(t.next()[1]))
            t.expect(":")
            self.type()
        t.expect("{")
        self.block_body(graph.block)
        t.expect("}")
        t.expect("}")
        if t.peek()[0] != "eof":
            raise t.error(f"unexpected {t.peek()[1]!r} after the module")
        term = graph.block.terminator
        if term is None:
            raise t.error("the main graph has no return")
        if len(term.operands) != len(out_names):
            raise t.error(f"signature names {len(out_names)} outputs, return gives {len(term.operands)}")
        graph.output_names = out_names
        return Module(graph, name, meta)


def _number(tok: str):
    if tok in ("nan", "inf", "-inf", "+inf"):
        return float(tok)
    if any(c in tok for c in ".eE"):
        return float(tok)
    return int(tok)


def _from_hex(hexstr: str, dt: DType, shape, t: _Tokens) -> np.ndarray:
    try:
        raw = bytes.fromhex(hexstr)
    except ValueError:
        raise t.error("malformed hex tensor data") from None
    n = int(np.prod(shape)) if shape else 1
    if len(raw) != n * dt.itemsize:
        raise t.error(f"tensor data has {len(raw)} bytes, {dt.short}{list(shape)} needs {n * dt.itemsize}")
    return np.frombuffer(raw, dtype=dt.numpy).reshape(shape)


_RES = re.compile(r"\nresources \{\n(.*)\}\s*$", re.S)


def _split_resources(text: str) -> tuple[str, dict[str, str]]:
    m = _RES.search(text)
    if not m:
        return text, {}
    blobs = {}
    for line in m.group(1).splitlines():
        line = line.strip()
        if line:
            key, _, hexstr = line.partition(":")
            blobs[key.strip()] = hexstr.strip()[2:]
    return text[:m.start()] + "\n", blobs


def parse(text: str, resources: dict[str, np.ndarray] | None = None) -> Module:
    """Parse the textual form; ``resources`` supplies tensors a display print elided."""
    return Parser(text, resources).module()
