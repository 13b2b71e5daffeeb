"""CNMF source extraction (issue 5). ``Estimates`` — the results container — lives in ``estimates``."""
