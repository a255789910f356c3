"""personalign: personalize a language model to one person, and measure how well each way works."""

__version__ = "0.1.0"
