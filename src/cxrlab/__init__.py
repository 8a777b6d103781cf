"""cxrlab: multi-label thoracic pathology classification on chest X-rays."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cxrlab")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
