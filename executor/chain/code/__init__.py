"""A job's JavaScript: read from the calldata of its UserCode transaction and trusted only once
the transaction's signed bytes hash to the job's ``codehash``.

``CodeFetcher`` (``fetcher``) asks the RPC endpoints in turn; ``envelope`` decodes and verifies
signed transaction envelopes (every type) and rebuilds one from a node's JSON view;
``calldata`` decodes the ``saveCodeInCallData`` call; ``cache`` keeps verified code by
``codehash``.
"""

from executor.chain.code.cache import CodeCache, VerifiedCode, normalize_codehash
from executor.chain.code.calldata import SAVE_CODE_SELECTOR, decode_code_calldata
from executor.chain.code.envelope import (
    DecodedTx,
    LegacyTransaction,
    decode_signed_tx,
    envelope_from_json,
    verify_raw_tx,
)
from executor.chain.code.fetcher import CodeFetcher, FetchedCode, endpoint_name, signed_tx_bytes

__all__ = [
    "SAVE_CODE_SELECTOR",
    "CodeCache",
    "CodeFetcher",
    "DecodedTx",
    "FetchedCode",
    "LegacyTransaction",
    "VerifiedCode",
    "decode_code_calldata",
    "decode_signed_tx",
    "endpoint_name",
    "envelope_from_json",
    "normalize_codehash",
    "signed_tx_bytes",
    "verify_raw_tx",
]
