"""The search policy and everything that decides it: axes, evidence, the decoupling detector, the
constitution's checks and the meta decision.
"""
