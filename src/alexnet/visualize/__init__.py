"""Looking inside: activations, filters, ZF's deconvnet, top-9 patches, occlusion, evolution, invariance, retrieval.

Importing this package is cheap: matplotlib is imported only by the functions that draw.
"""

from alexnet.visualize.deconvnet import StrongestProjection, deconvnet, deconvnet_strongest
from alexnet.visualize.hooks import SelectionError, capture

__all__ = ["SelectionError", "StrongestProjection", "capture", "deconvnet", "deconvnet_strongest"]
