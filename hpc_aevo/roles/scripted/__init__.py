"""The offline roles backend: a deterministic mutator per axis and the rule-based meta step."""
