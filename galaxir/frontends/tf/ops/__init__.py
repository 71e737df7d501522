"""TF op converters, one module per op family; importing this package registers them."""
from . import control, elementwise, nn, tensor, tensorlist  # noqa: F401
