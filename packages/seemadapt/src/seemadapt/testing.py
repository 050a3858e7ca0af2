"""Tiny, fully valid contract datasets for tests, examples and smoke runs (made by :mod:`segcontract.testing`)."""

from segcontract.testing import make_contract_dataset

__all__ = ["make_contract_dataset"]
