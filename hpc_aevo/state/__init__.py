"""The campaign's state tree and every typed record in it: the layer everything else stands on.

Nothing here imports from the other packages, so any of them may read or write state.
"""
