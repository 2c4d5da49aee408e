"""Analysis: the per-layer parameters / computation table and receptive fields."""

from alexnet.analysis.summary import LayerRow, ModelSummary, compare_table, summarize, summary_table

__all__ = ["LayerRow", "ModelSummary", "compare_table", "summarize", "summary_table"]
