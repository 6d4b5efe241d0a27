"""lmzip trainer: train a Parameter Golf class GPT and export it as an lmzip model container.

Run `python -m trainer --help`; see trainer/README.md.
"""
