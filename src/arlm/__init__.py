"""arlm: autoregressive transformer language models, from raw text to decoding."""

from arlm.errors import ArlmError

__version__ = "0.1.0"
__all__ = ["ArlmError", "__version__"]
