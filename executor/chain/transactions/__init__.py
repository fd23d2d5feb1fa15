"""The executor's own transactions: outputs and slashes, from signing to mined (or withdrawn).

``TxManager`` (``manager``) is the one way in: it assigns nonces locally, prices with fees known
ahead (``head``: the latest block's base fee and tip, polled), signs (``signing``: EIP-1559
envelopes), sends to every endpoint (``broadcast``), and follows each transaction until it is
mined, replacing or withdrawing it on its nonce when needed (``inflight``). ``policy`` holds the
pure rules (fee bumps, nonce book, what an RPC error means) and ``reads`` the raw JSON-RPC reads
made once per block or per output.
"""

from executor.chain.transactions.head import ChainHead, Head
from executor.chain.transactions.inflight import TxOutcome, TxStatus
from executor.chain.transactions.manager import DEFAULT_GAS_CEILING, TxManager, account_from_key
from executor.chain.transactions.policy import Fees, RpcFailure, classify_rpc_error, revert_data
from executor.chain.transactions.signing import SignedTx, sign_dynamic_fee_tx

__all__ = [
    "DEFAULT_GAS_CEILING",
    "ChainHead",
    "Fees",
    "Head",
    "RpcFailure",
    "SignedTx",
    "TxManager",
    "TxOutcome",
    "TxStatus",
    "account_from_key",
    "classify_rpc_error",
    "revert_data",
    "sign_dynamic_fee_tx",
]
