"""The commands a person runs: `round` (the daemon), `status`, and the file checks.

`python -m hpc_aevo.round|status|config|profile` reach them through thin shims at the package top.
"""
