"""Removal processes: each takes information out of the data step by step and trains a
predictor (an injected network from `ardiff.models`) to undo one step. See `base.py`."""
