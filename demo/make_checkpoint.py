"""Saves a torch state_dict of a model with random weights: the demo's stand-in for a trained checkpoint.

    python demo/make_checkpoint.py model.py:Class[(args)] out.pt
"""

import sys

import torch

from porter.check.modelspec import build_model, parse_model_spec

spec, out = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
conventional = {"torch": torch, "nn": torch.nn, "F": torch.nn.functional}  # the seed's snippets omit imports
model = build_model(parse_model_spec(spec), preseed=conventional)
torch.save(model.state_dict(), out)
print(f"saved {len(model.state_dict())} tensors of {spec} to {out}")
