"""The measurement harness: runs one engine on one model and writes the dAIEdge report."""
