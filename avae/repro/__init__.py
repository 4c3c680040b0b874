"""Reproducing the paper: its experiments as data (paper), profiles and planned runs (plan), their cost
(costs), running them (runner: many runs, on the executors of ray_cluster, announced by progress; execute:
one run; reproduce, sweep), reading finished runs (results), publishing them (publish) and writing what
they show (report/)."""
