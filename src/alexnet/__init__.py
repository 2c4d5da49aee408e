"""AlexNet (Krizhevsky et al., NIPS 2012) and ZFNet (Zeiler & Fergus, ECCV 2014), faithful to the papers."""

from alexnet import denormals, malloc
from alexnet.factory import create_model
from alexnet.models import list_models

__version__ = "0.1.0"
__all__ = ["__version__", "create_model", "denormals", "list_models", "malloc"]
