"""Trust boundaries: the one bubblewrap builder and the view each job stage or agent session gets."""
