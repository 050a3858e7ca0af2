"""The SDKs' public names for the contract are segcontract's objects (one implementation, old names kept)."""

from __future__ import annotations

import diffsynth.dataset
import seemadapt.data
import seemadapt.testing
import segcontract
import segcontract.testing


def test_seemadapt_data_reexports_the_contract():
    for name in (
        "IGNORE_LABEL",
        "Category",
        "ContractError",
        "attach_categories",
        "class_names_of",
        "contract_features",
        "id2rgb",
        "make_row",
        "read_categories",
        "rgb2id",
        "validate",
    ):
        assert getattr(seemadapt.data, name) is getattr(segcontract, name), name
    assert seemadapt.testing.make_contract_dataset is segcontract.testing.make_contract_dataset


def test_diffsynth_raises_the_contract_error():
    assert diffsynth.dataset.ContractError is segcontract.ContractError
    assert issubclass(segcontract.ContractError, ValueError)
