"""Evaluation: side-by-side comparisons of methods, evaluators, win rates and reports."""
