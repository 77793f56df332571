# Written with AI assistance; review before relying on it.
