"""The TensorFlow Lite frontend: ``import_tflite`` reads .tflite flatbuffers (float32,
float16-weight and int8-quantized) through the ``tflite`` schema package.

    import galaxir as gx
    m = gx.import_model("model.tflite")
"""
from __future__ import annotations

from .importer import CONVERTERS, TfliteContext, converter, import_tflite

__all__ = ["CONVERTERS", "TfliteContext", "converter", "import_tflite"]
