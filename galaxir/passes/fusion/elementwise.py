"""Chains of elementwise ops fused into one ``fused_elementwise`` op carrying them as a region.

The pattern is rooted at the last op of a chain (an elementwise op whose result is not
consumed only by other elementwise ops).  It grows the group backwards through
producers that are elementwise, in the same block, and whose results are used only inside
the group (diamonds such as ``x * sigmoid(x)`` included), then moves the group into the
region of a new op: the region's block arguments are the chain's external inputs, scalar
constants are copied inside, and the region returns the chain's result.

    %1 = mul(%x, %c) ; %2 = add(%1, %y) ; %3 = tanh(%2)
      -> %3 = fused_elementwise(%x, %y) ({ ^(%a, %b): %c = constant ; %1 = mul(%a, %c) ;
                                            %2 = add(%1, %b) ; %3 = tanh(%2) ; return %3 })

A backend whose loop runs a different set of ops subclasses ``FuseElementwise`` and
overrides ``fusible`` / ``inline_const`` (the cpu backend's ``cpu-fuse-elementwise``,
galaxir/backends/cpu/rules.py); a ``fused_elementwise`` it admits as a member has its region
body inlined into the new region.
"""
from __future__ import annotations

from ...ir.clone import clone_op
from ...ir.core import Block, Operation, Region, Value
from ...ir.traits import Elementwise, ops_with
from ...ir.types import TensorType
from ..rewrite import RewritePattern, Rewriter, const_array


#: constants up to this many elements are copied into the region instead of passed in
INLINE_CONST_ELEMENTS = 16
#: how many ops ``_continues`` follows forward to find where a chain ends (beyond: "not
#: here", as a long chain's inner op is not its end; bounds the work per op)
CHAIN_LOOKAHEAD = 32
#: the most ops one fused op takes: a longer chain is split into consecutive groups (one
#: loop of thousands of ops is no faster, and its expression would be thousands deep)
MAX_GROUP_OPS = 64


def _fusible_kind(op: Operation) -> bool:
    """Does ``op``'s definition say it may join a fused loop (``Elementwise(fusible=True)``)?"""
    t = op.trait(Elementwise)
    return t is not None and t.fusible


def _fusible(op: Operation | None) -> bool:
    if op is None or len(op.results) != 1 or op.regions or not _fusible_kind(op):
        return False
    if not all(isinstance(v.type, TensorType) for v in op.operands if v is not None):
        return False
    return isinstance(op.results[0].type, TensorType)


def _inside_fused(op: Operation) -> bool:
    return any(a.name == "fused_elementwise" for a in op.ancestors)


def _same_shape(p: Operation, user: Operation) -> bool:
    """Does ``user`` read ``p``'s result without broadcasting it?  A producer computed on a
    smaller, broadcast shape stays outside the chain: inside, it would be recomputed for
    every element of the larger result (a squeeze-excitation gate, sigmoid over [N,C,1,1],
    evaluated once per pixel)."""
    a, b = p.results[0].type, user.results[0].type
    if a.shape is None or b.shape is None:
        return True
    return tuple(a.shape) == tuple(b.shape)


def _absorbs(user: Operation, p: Operation, fusible=None) -> bool:
    return (fusible or _fusible)(user) and user.parent is p.parent and _same_shape(p, user)


def _continues(op: Operation, fusible=None, max_ops: int = MAX_GROUP_OPS,
               memo: dict | None = None) -> bool:
    """Will a later op of the chain absorb ``op``?  (Every user is a fusible op of the same
    block reading it at its own shape, and the users' chains end at one op: the group
    grown back from that end then takes it in.  Users whose chains end apart, e.g. one
    feeding an op that is not fusible, leave ``op`` the end of a chain of its own.)
    ``memo``: ``_takers``' answers, kept while the IR is unchanged (Rewriter.memo)."""
    memo = {} if memo is None else memo
    return _chain_end(op, fusible, max_ops, [CHAIN_LOOKAHEAD], memo) is not op


def _distinct_users(op: Operation) -> list[Operation]:
    seen: dict[int, Operation] = {}
    for u in op.results[0].users:
        seen.setdefault(id(u), u)
    return list(seen.values())


def _takers(cur: Operation, fusible, max_ops: int, memo: dict) -> tuple[Operation, ...]:
    """The users that carry ``cur``'s chain on: all its distinct users when each absorbs
    it, else none (``cur`` ends a chain); a single user whose fused op would outgrow
    ``max_ops`` takes it not either.  Remembered in ``memo`` by op: each op of a long
    chain is looked at by the CHAIN_LOOKAHEAD ops before it, so without the memo every op
    would ask ``fusible`` of its users that many times."""
    got = memo.get(id(cur))
    if got is None:
        users = _distinct_users(cur)
        if not users or not all(_absorbs(u, cur, fusible) for u in users):
            got = ()
        elif len(users) == 1 and op_weight(users[0]) + op_weight(cur) > max_ops:
            got = ()  # a full fused op takes no more: the chain ends here
        else:
            got = tuple(users)
        memo[id(cur)] = got
    return got


def _chain_end(op: Operation, fusible, max_ops: int, budget: list[int],
               memo: dict) -> Operation | None:
    """The op ending the chain that ``op`` flows into (``op`` itself when no later op
    absorbs it); None when that is not known within ``budget`` steps (a long chain: its
    end is far, so ``op`` is not one)."""
    cur = op
    while True:
        budget[0] -= 1
        if budget[0] < 0:
            return None
        users = _takers(cur, fusible, max_ops, memo)
        if not users:
            return cur
        if len(users) > 1:
            ends = [_chain_end(u, fusible, max_ops, budget, memo) for u in users]
            if any(e is None for e in ends):
                return None
            return ends[0] if all(e is ends[0] for e in ends) else cur
        cur = users[0]


def op_weight(op: Operation) -> int:
    """How many ops ``op`` brings into a group: a fused_elementwise member its region's
    (the constants copied in are not chain ops)."""
    if op.name == "fused_elementwise" and op.regions:
        return max(1, sum(1 for o in op.regions[0].block
                          if not o.is_terminator and o.name != "constant"))
    return 1


def collect_group(root: Operation, max_ops: int | None = None, fusible=None) -> list[Operation]:
    """The ops of the chain ending at ``root``, in block order: at most ``max_ops`` ops in
    all (a fused_elementwise member counts its region's ops; the ops nearest the root are
    taken, the rest of a longer chain becomes groups of its own).  ``fusible``: which ops
    may join (default: the ops declared ``Elementwise(fusible=True)``).

    A worklist: a producer is looked at each time one of its users joins the group, so it
    joins once all of its users have, in time linear in the chain's size."""
    limit = MAX_GROUP_OPS if max_ops is None else max_ops
    fusible = fusible or _fusible
    parent = root.parent
    group = {id(root): root}
    size = op_weight(root)
    work = [root]
    while work and size < limit:
        op = work.pop()
        for v in op.operands:
            p = v.producer if v is not None else None
            if p is None or id(p) in group or p.parent is not parent or not fusible(p):
                continue
            w = op_weight(p)
            if size + w > limit:
                continue
            if all(id(u) in group and _same_shape(p, u) for u in p.results[0].users):
                group[id(p)] = p
                size += w
                work.append(p)
                if size >= limit:
                    break
    ordered = []  # block order: walk back from the root (every member comes before it)
    op = root
    while op is not None and len(ordered) < len(group):
        if id(op) in group:
            ordered.append(op)
        op = op.prev
    ordered.reverse()
    return ordered


def _small_const(v: Value) -> bool:
    arr = const_array(v)
    return arr is not None and arr.size <= INLINE_CONST_ELEMENTS


class FuseElementwise(RewritePattern):
    """A chain of >= ``min_ops`` elementwise ops -> one fused_elementwise op with a region."""

    name = "fuse-elementwise"
    #: the most ops one group takes (a fused_elementwise member counts its region's ops)
    max_ops = MAX_GROUP_OPS

    def __init__(self, min_ops: int = 2):
        self.min_ops = min_ops

    def fusible(self, op: Operation) -> bool:
        """May ``op`` join a chain?  (Subclasses narrow or widen the set.)"""
        return _fusible(op)

    def inline_const(self, v: Value) -> bool:
        """Is the constant ``v`` copied into the region (else it is passed in)?"""
        return _small_const(v)

    @property
    def root(self) -> tuple[str, ...]:
        """Every op declared ``Elementwise(fusible=True)`` (asked when the pattern set is
        built, so ops defined after import count too)."""
        return tuple(sorted(ops_with(Elementwise, lambda t: t.fusible)))

    def _match(self, op: Operation, memo: dict | None = None):
        if not self.fusible(op):
            return None, "not a fusible elementwise op"
        if _continues(op, self.fusible, self.max_ops, memo):
            return None, "not the end of its chain"
        if op.parent is None or _inside_fused(op):
            return None, "already inside a fused op"
        group = collect_group(op, self.max_ops, self.fusible)
        if len(group) < self.min_ops:
            return None, f"the chain has {len(group)} op(s), fewer than {self.min_ops}"
        return group, None

    def match_and_rewrite(self, op: Operation, rewriter: Rewriter) -> bool:
        group, _ = self._match(op, rewriter.memo(self))
        if group is None:
            return False
        inside = {id(g) for g in group}
        inputs: list[Value] = []
        consts: list[Value] = []
        seen: set[int] = set()
        for g in group:
            for v in g.operands:
                if v is None or id(v) in seen or (v.producer is not None and id(v.producer) in inside):
                    continue
                seen.add(id(v))
                (consts if self.inline_const(v) else inputs).append(v)
        block = Block([v.type for v in inputs])
        mapping = {id(v): a for v, a in zip(inputs, block.args)}
        for c in consts:
            block.append(clone_op(c.producer, mapping))
        for g in group:
            if g.name == "fused_elementwise":
                _inline_region(g, block, mapping)
            else:
                block.append(clone_op(g, mapping))
        block.append(Operation("return", [mapping[id(op.results[0])]]))
        new = rewriter.create("fused_elementwise", *inputs, before=op, regions=[Region(block)])
        rewriter.replace_op(op, new.results)
        return True

    def explain(self, op: Operation) -> str:
        group, why = self._match(op)
        return "matches" if group is not None else why


def _inline_region(op: Operation, block: Block, mapping: dict) -> None:
    """Append the body of the fused_elementwise ``op`` to ``block`` (its arguments bound to
    what ``op``'s operands map to) and map ``op``'s result to the body's return value."""
    body = op.regions[0].block
    inner = dict(mapping)
    for a, v in zip(body.args, op.operands):
        inner[id(a)] = mapping.get(id(v), v)
    for o in body:
        if o.is_terminator:
            continue
        block.append(clone_op(o, inner))
    res = body.results[0]
    mapping[id(op.results[0])] = inner.get(id(res), res)


PATTERNS = [FuseElementwise()]
