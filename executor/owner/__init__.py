"""The owner's side of a node: its registration, drain, revive, deregistration and stake.

``oyster-executor owner`` (``executor.commands.owner``) drives it. It talks to the TeeManager the
node's config names, either flavour: the development one (``contracts/devnet``: the enclave's
signature is enough) or the production Oyster one (an attestation signed by an attestation
verifier, and a stake in the staking token). The ABIs are ``executor/abi/DevnetTeeManager.json``,
``OysterTeeManager.json`` and ``StakingToken.json``. Nothing here runs inside the enclave.
"""
