"""Model backends: text generation, log-probabilities, and text embeddings."""
