"""Reproducing the paper: its experiments as data (paper), profiles and planned runs (plan), their cost
(costs), running them (runner, reproduce, sweep), reading finished runs (results), publishing them
(publish) and writing what they show (report/)."""
