"""Everything that speaks to the chain (docs/architecture.md).

Shared by the sub-packages: ``rpc`` (HTTP endpoints with failover, the one JSON-RPC call helper),
``enclave_key`` (the enclave's key, the registration signature) and ``jobs_contract`` (the Jobs
contract's calls). The sub-packages, which do not import each other: ``follow`` (the contracts'
events in chain order), ``code`` (a job's verified JavaScript) and ``transactions`` (the
executor's own transactions).
"""
