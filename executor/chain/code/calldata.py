"""The UserCode contract's calldata: ``saveCodeInCallData(string inputData, bytes metadata)``.

The user's JavaScript is the ``inputData`` string of such a call (docs/protocol.md §1, §3 step 1).
"""

from __future__ import annotations

from eth_abi import decode
from eth_abi.exceptions import DecodingError
from eth_utils import function_signature_to_4byte_selector

SAVE_CODE_SELECTOR = function_signature_to_4byte_selector("saveCodeInCallData(string,bytes)")


def decode_code_calldata(calldata: bytes) -> bytes | None:
    """The ``inputData`` bytes of a ``saveCodeInCallData`` call, trailing zero bytes removed.

    Returns None when the calldata is not a valid call of that function.
    """
    if calldata[:4] != SAVE_CODE_SELECTOR:
        return None
    try:
        # The string is decoded as raw bytes: its ABI encoding is identical and user code need
        # not be valid UTF-8 for us to hand it to workerd (which then reports the problem).
        input_data, _metadata = decode(["bytes", "bytes"], calldata[4:], strict=False)
    except (DecodingError, OverflowError, ValueError):
        return None
    return bytes(input_data).rstrip(b"\x00")
