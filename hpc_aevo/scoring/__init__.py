"""Reading what jobs measured (dev scores) and scoring candidates on the private leaderboard."""
