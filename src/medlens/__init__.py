"""medlens: medical-imaging deep learning from raw scans to trusted, fast results."""

from importlib.metadata import PackageNotFoundError, version

from medlens.errors import MedlensError, MedlensWarning
from medlens.image import Image
from medlens.io import read_image, write_image

try:
    __version__ = version("medlens")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0"

__all__ = ["Image", "MedlensError", "MedlensWarning", "__version__", "read_image", "write_image"]
