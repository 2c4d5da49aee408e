"""Analysis: the per-layer parameters / computation table, receptive fields, and (``alexnet.analysis.linear_probe``,
imported on its own: it reads features through ``alexnet.visualize``) a linear classifier on each layer's features."""

from alexnet.analysis.summary import LayerRow, ModelSummary, compare_table, summarize, summary_table

__all__ = ["LayerRow", "ModelSummary", "compare_table", "summarize", "summary_table"]
