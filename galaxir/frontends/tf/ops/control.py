"""TF control flow: functional While and If (from tf.while_loop / tf.cond and Keras RNNs)."""
from __future__ import annotations

from ..importer import TfContext, convert_function, converter


@converter("PartitionedCall", "StatefulPartitionedCall")
def partitioned_call(ctx: TfContext):
    """A function call: its body is inlined."""
    return convert_function(ctx, ctx.tf_op.get_attr("f").name, list(ctx.inputs), ctx.b.block)
