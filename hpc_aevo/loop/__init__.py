"""The round daemon and what it does between jobs: installing the frozen substrate and forking sandboxes."""
