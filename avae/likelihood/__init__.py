"""Likelihood estimates: IWAE, SIVI and AIS over callables (estimators) and driven on a model's
members (scoring). Used by training (the test curve), evaluation and the benchmark."""
