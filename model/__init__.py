"""The embedding space: networks, training and export (torch, in `model.nn` and friends), and the
torch-free runtime that precompute and server share (tiles, imagery, metadata, bundle, scoring).

Importing `model` itself never imports torch.
"""
