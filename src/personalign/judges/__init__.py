"""Judges and reward models: rule checks, LLM-as-judge, trained reward models."""
