"""The offline roles backend: a deterministic mutator per axis, told by the campaign's evidence, and the rule-based meta step."""
