"""Candidates' jobs: the spec, the body that runs inside a job, the launcher that submits, watches and
retries them, and the reconciliation of files against the scheduler's answer. `backends/` holds the
schedulers (submitit's local executor and SLURM).
"""
