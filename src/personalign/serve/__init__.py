"""`personalign serve`: personalized models behind an OpenAI-compatible HTTP API (hf engine or vLLM)."""
