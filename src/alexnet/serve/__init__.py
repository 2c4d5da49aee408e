"""``alexnet serve``: a DeepVis for the browser — activation maps, deconvnet, top-9 and occlusion, live.

FastAPI is imported only by :mod:`alexnet.serve.app`, so importing this package stays cheap.
"""

from alexnet.serve.loading import load_slot
from alexnet.serve.state import ServerState, Slot

__all__ = ["ServerState", "Slot", "load_slot"]
