"""Verification: the 10-fold pairs protocol (pure numpy), pairs files, reports and plots.

Modules: `verification` (the protocol), `embeddings` (flip + L2 embeddings of an image set), `sets`
(a set of pairs from a .bin or a folder + pairs file, and one protocol run with the seed's log lines), `pairs`
(pairs files), `pair_sampling` (generate_pairs.py's sampler), `report` (JSON, ROC and hardest-pairs PNGs),
`make_bin` (folder + pairs file -> .bin).
"""
