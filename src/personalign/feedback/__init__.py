"""Feedback from a person (blind choices and edits): the studio's database and its export to training data."""

from personalign.feedback.db import Candidate, FeedbackDB, FeedbackError, Round
from personalign.feedback.export import export, feedback_demonstrations, feedback_pairs

__all__ = ["Candidate", "FeedbackDB", "FeedbackError", "Round", "export", "feedback_demonstrations", "feedback_pairs"]
