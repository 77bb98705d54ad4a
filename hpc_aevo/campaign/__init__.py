"""What a person writes: the campaign YAML, the cluster profiles, and the one reader both go through."""
