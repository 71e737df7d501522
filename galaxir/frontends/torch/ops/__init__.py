"""ATen converters, one module per op family; importing this package registers them."""
from . import elementwise, nn, rnn, tensor  # noqa: F401
