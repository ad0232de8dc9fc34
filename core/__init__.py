"""The neutral bottom layer: errors, atomic writes, the study directory's layout, the status
vocabulary and metric semantics.

Everything above imports from here (trainables, analysis, the study runner and CLI); this package
imports nothing of ours and nothing heavy (no torch, Ray, plotly, pandas at import time).
"""
