"""Evaluating a trained run: eval.json (evaluate), analysis.json (analysis: classifier, FD, MMD, active
units) and the statistics that compare runs (stats)."""
