"""Experiments on top of the pipeline: the demo and the Table 1 / Figure 4 reproduction."""
