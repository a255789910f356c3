"""The feedback studio: a small local web app where a person compares candidates blind, edits them and edits
their profile; every answer lands in the feedback database that `personalize --feedback` trains on."""
