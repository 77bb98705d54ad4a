"""The campaign report (Markdown and figures) and the TensorBoard runs, drawn from the state tree's records."""
