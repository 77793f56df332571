# Written with AI assistance; review before relying on it.
"""Model implementations served by Cerebro (each a package with its own processor and weights loader)."""
