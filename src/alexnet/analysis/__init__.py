"""Analysis: the per-layer parameters / computation table, receptive fields, and (each imported on its own: they
read images) a layer's features of many images (``alexnet.analysis.features``) and a linear classifier on them
(``alexnet.analysis.linear_probe``)."""

from alexnet.analysis.summary import LayerRow, ModelSummary, compare_table, summarize, summary_table

__all__ = ["LayerRow", "ModelSummary", "compare_table", "summarize", "summary_table"]
