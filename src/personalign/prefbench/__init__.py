"""prefbench: a multi-faceted benchmark of personalized preference learning (Dong et al. 2025).

Layout: `schema` (one record type for every source), `data/` (loaders), `characterize` (how much users
disagree), `features` (cached text embeddings → numeric pair sets), `methods/` (one file per method behind
`methods.base.PrefMethod`), `evaluate` (accuracy, tax, adaptation), `bench` (the whole study) and `report`.
"""
