"""Ensemble pipelines: models made of steps that run other models (ensemble.py)."""
from naiad.ensembles.ensemble import EnsembleScheduler, Graph, Step, check_members, graph

__all__ = ["EnsembleScheduler", "Graph", "Step", "check_members", "graph"]
