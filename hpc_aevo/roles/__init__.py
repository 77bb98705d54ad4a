"""Who plays the worker, the collector and the meta step: one interface (`interface.py`), chosen by
`factory.py`, with the offline `scripted/` backend and the `claude/` agents behind it.
"""
