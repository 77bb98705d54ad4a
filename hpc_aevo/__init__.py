"""hpc_aevo: autonomous post-training campaigns on SLURM, after A-Evolve-Training.

The package is the toolkit around a user-authored substrate: it forks the substrate into
candidate sandboxes, drives workers, launches training and evaluation through a scheduler,
collects evidence and lets a constitution-bounded meta step write the next search policy.
"""

__version__ = "0.1.0"
