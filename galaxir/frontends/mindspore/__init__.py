"""The MindSpore frontend: ``.mindir`` files (MindSpore's own export format) to galaxir.

MindSpore need not be installed to import a model: the file's protobuf schema is declared
in ``schema``.  Constructs it does not cover (control flow between function graphs) raise
``UnsupportedOpError``; ``mindspore.export(net, x, file_format="ONNX")`` is then the route.
"""
from .importer import CONVERTERS, converter, import_mindir

__all__ = ["CONVERTERS", "converter", "import_mindir"]
