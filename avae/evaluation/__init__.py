"""Evaluating a trained run: eval.json (evaluate), the time it takes (cost_model), analysis.json
(analysis: classifier, FD, MMD, active units) and the statistics that compare runs (stats)."""
