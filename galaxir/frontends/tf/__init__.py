"""The TensorFlow frontend: ``import_tf`` for Keras models, ``tf.function`` / ``tf.Module``
with an input signature, ConcreteFunctions and SavedModel folders.

    import galaxir as gx
    m = gx.import_model(keras_model)          # or import_tf(...)
"""
from __future__ import annotations

from .importer import CONVERTERS, TfContext, concrete_function, converter, import_tf

__all__ = ["CONVERTERS", "TfContext", "concrete_function", "converter", "import_tf"]
