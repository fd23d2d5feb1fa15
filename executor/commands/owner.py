"""``oyster-executor owner``: the node owner's transactions on the TeeManager.

``register`` takes the node's signed registration message (from its admin API, or a file saved from
``admin init``) and sends ``registerTeeNode`` from the owner's account; on the production Oyster
TeeManager it first gets the enclave's attestation signed by an attestation verifier and approves
the stake. ``drain``, ``revive``, ``deregister``, ``add-stake``, ``withdraw-stake`` and ``status``
act on a registered node. The TeeManager's flavour (devnet or production) is detected from its
interface. The owner's key is read from a file or the environment, never from the command line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import stat
from pathlib import Path
from typing import Any

from executor.errors import ExecutorError, KeyFileError

OWNER_KEY_ENV = "OYSTER_OWNER_KEY"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "owner",
        help="the owner's transactions: register, drain, revive, deregister a node",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="owner_command", metavar="ACTION")
    actions.required = True

    reg = actions.add_parser(
        "register",
        help="register the node (registerTeeNode) with its signed registration message",
        description="Register the node on the TeeManager as its owner. The signed registration "
        "message comes from the node's admin API (--admin-url) or a saved copy (--message-file). "
        "The production TeeManager also needs the enclave's attestation signed by an attestation "
        "verifier (--attestation-url with --verifier-url, or --attestation-json) and a stake, "
        "which is approved first.",
    )
    _chain_options(reg)
    source = reg.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--admin-url", help="the node's admin API: vsock://CID:PORT/ or http://HOST:PORT/"
    )
    source.add_argument(
        "--message-file",
        type=Path,
        metavar="PATH",
        help="JSON saved from `admin init` or `admin register-message`",
    )
    prod = reg.add_argument_group("production TeeManager (attestation and stake)")
    prod.add_argument(
        "--attestation-url",
        metavar="URL",
        help="the enclave's attestation server, e.g. http://ENCLAVE_IP:1300/attestation/raw",
    )
    prod.add_argument(
        "--verifier-url",
        metavar="URL",
        help="an attestation verifier that signs it, e.g. http://VERIFIER:1400/verify/raw",
    )
    prod.add_argument(
        "--attestation-json",
        type=Path,
        metavar="PATH",
        help="the verifier's JSON reply, saved earlier (instead of the two URLs)",
    )
    prod.add_argument(
        "--stake",
        type=_amount,
        metavar="AMOUNT",
        help="stake in the token's base units (default: the contract's MIN_STAKE_AMOUNT)",
    )
    test = reg.add_argument_group(
        "TEST PATH, local chains only: sign the attestation with a verifier key you hold"
    )
    test.add_argument(
        "--self-sign-attestation",
        type=Path,
        metavar="VERIFIER_KEY",
        help="32-byte raw verifier secret (as `keygen` writes); the chain's verifier must know it",
    )
    test.add_argument(
        "--pcrs", metavar="PCR0,PCR1,PCR2", help="the enclave image's PCRs (hex, 48 bytes each)"
    )
    reg.set_defaults(handler=_run(_register))

    for name, help_text in (
        ("drain", "stop the node taking new jobs (drainTeeNode)"),
        ("revive", "let a draining node take jobs again (reviveTeeNode)"),
        (
            "deregister",
            "remove the node (deregisterTeeNode; production: drain first; returns the stake)",
        ),
        ("status", "show the node's registration on chain"),
    ):
        action = actions.add_parser(name, help=help_text, description=help_text)
        _chain_options(action)
        _enclave_options(action)
        action.set_defaults(handler=_run(_ACTIONS[name]))

    for name, help_text in (
        ("add-stake", "add stake to the node (production; approves it first)"),
        ("withdraw-stake", "withdraw stake from a draining node (production)"),
    ):
        action = actions.add_parser(name, help=help_text, description=help_text)
        _chain_options(action)
        _enclave_options(action)
        action.add_argument(
            "--amount", type=_amount, required=True, help="in the token's base units"
        )
        action.set_defaults(handler=_run(_ACTIONS[name]))


def _chain_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config-file",
        type=Path,
        metavar="PATH",
        help="the node's config: its http_rpc_url and tee_manager_contract_addr are the defaults",
    )
    parser.add_argument("--rpc-url", metavar="URL", help="HTTP JSON-RPC of the chain")
    parser.add_argument("--tee-manager", metavar="ADDRESS", help="the TeeManager contract")
    parser.add_argument(
        "--owner-key-file",
        type=Path,
        metavar="PATH",
        help=f"the owner's private key (32 raw bytes or hex text, mode 0600); "
        f"default: env {OWNER_KEY_ENV}",
    )


def _enclave_options(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--enclave", metavar="ADDRESS", help="the node's enclave address")
    which.add_argument(
        "--admin-url", help="read the enclave address from the node's admin API (/tee-details)"
    )


def _usage(flag: str, reason: str) -> ExecutorError:
    """A command-line mistake: one line naming the flag."""
    return ExecutorError(f"{flag}: {reason}")


def _amount(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer amount: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {value}")
    return value


# --- inputs -------------------------------------------------------------------------------------


def read_owner_key(path: Path | None) -> bytes:
    """The owner's 32-byte key from ``path`` (raw or hex text, private to its owner) or the env."""
    if path is None:
        text = os.environ.get(OWNER_KEY_ENV, "").strip()
        if not text:
            raise _usage(
                "--owner-key-file", f"no owner key: pass --owner-key-file or set {OWNER_KEY_ENV}"
            )
        return _key_from_text(text, f"${OWNER_KEY_ENV}")
    try:
        info = path.stat()
    except OSError as e:
        raise KeyFileError(path, f"cannot read: {e.strerror or e}") from e
    if not stat.S_ISREG(info.st_mode):
        raise KeyFileError(path, "is not a regular file")
    if stat.S_IMODE(info.st_mode) & 0o077:
        raise KeyFileError(
            path,
            f"is accessible by group or others (mode {stat.S_IMODE(info.st_mode):04o}); "
            f"refusing to use it. Make it private to its owner: chmod 600 {path}",
        )
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise KeyFileError(path, f"cannot read: {e.strerror or e}") from e
    if len(raw) == 32:
        return raw
    try:
        return _key_from_text(raw.decode("ascii").strip(), str(path))
    except UnicodeDecodeError:
        raise KeyFileError(path, "holds neither 32 raw bytes nor a hex key") from None


def _key_from_text(text: str, where: str) -> bytes:
    try:
        key = bytes.fromhex(text.removeprefix("0x"))
    except ValueError:
        raise KeyFileError(where, "is not a hex private key") from None
    if len(key) != 32:
        raise KeyFileError(where, f"must be a 32-byte key, got {len(key)} bytes")
    return key


def _chain_target(args: argparse.Namespace) -> tuple[str, str]:
    rpc_url, tee_manager = args.rpc_url, args.tee_manager
    if args.config_file is not None:
        try:
            config: dict[str, Any] = json.loads(args.config_file.read_text())
        except OSError as e:
            raise _usage("--config-file", f"cannot read {args.config_file}: {e.strerror}") from e
        except ValueError as e:
            raise _usage("--config-file", f"{args.config_file} is not JSON: {e}") from e
        configured = config.get("http_rpc_url")
        if isinstance(configured, list):
            configured = configured[0] if configured else None
        rpc_url = rpc_url or configured
        tee_manager = tee_manager or config.get("tee_manager_contract_addr")
    if not rpc_url:
        raise _usage("--rpc-url", "required (or --config-file with http_rpc_url)")
    if not tee_manager:
        raise _usage("--tee-manager", "required (or --config-file with tee_manager_contract_addr)")
    return str(rpc_url), str(tee_manager)


async def _admin_json(url: str, path: str) -> Any:
    from executor.admin.client import AdminClient

    client = AdminClient(url, timeout_s=30.0)
    await client.wait_until_up(30.0)
    return (await client.expect_ok("GET", path)).json()


async def _enclave_address(args: argparse.Namespace) -> str:
    if args.enclave:
        return str(args.enclave)
    details = await _admin_json(args.admin_url, "/tee-details")
    return str(details["enclave_address"])


# --- actions ------------------------------------------------------------------------------------


def _run(action: Any) -> Any:
    def handler(args: argparse.Namespace) -> int:
        from executor.owner.chain import OwnerChain, owner_account

        rpc_url, tee_manager = _chain_target(args)
        owner = owner_account(read_owner_key(args.owner_key_file))

        async def go() -> int:
            from executor.owner.tee_manager import detect_tee_manager

            chain = OwnerChain(rpc_url, owner)
            try:
                flavour = await detect_tee_manager(chain, tee_manager)
                print(f"TeeManager {flavour.address}: {flavour.kind}; owner {chain.owner_address}")
                return int(await action(args, flavour))
            finally:
                await chain.close()

        return asyncio.run(go())

    return handler


async def _register(args: argparse.Namespace, flavour: Any) -> int:
    from executor.owner import attestation as att
    from executor.owner.registration import RegistrationMessage, read_message_file
    from executor.owner.tee_manager import DevnetTeeManager, OysterTeeManager

    if args.message_file is not None:
        message = read_message_file(args.message_file)
    else:
        data = await _admin_json(args.admin_url, "/signed-registration-message")
        if "enclave_public_key" not in data:  # a node from before the key was in the message
            details = await _admin_json(args.admin_url, "/tee-details")
            data["enclave_public_key"] = details.get("enclave_public_key")
        message = RegistrationMessage.from_json(data, f"{args.admin_url} registration message")
    message.check(flavour.chain.owner_address)
    state = await flavour.state(message.enclave_address)
    if state.owner is not None:
        raise ExecutorError(f"already registered: {state.describe()}")

    if isinstance(flavour, DevnetTeeManager):
        if any((args.attestation_url, args.verifier_url, args.attestation_json, args.stake)):
            print("note: the devnet TeeManager takes no attestation and no stake; ignoring them")
        tx = await flavour.register(message)
    else:
        assert isinstance(flavour, OysterTeeManager)
        attestation = await _attestation(args, message, att)
        verifier = attestation.verifier_address()
        print(
            f"attestation: enclave key 0x{attestation.enclave_public_key.hex()[:16]}..., "
            f"signed by verifier {verifier}, timestamp {attestation.timestamp_ms} ms"
        )
        stake = args.stake if args.stake is not None else await flavour.min_stake()
        approval = await flavour.ensure_allowance(stake)
        if approval:
            print(f"approved a stake of {stake} in tx {approval}")
        tx = await flavour.register(message, attestation, stake)
    print(f"registered in tx {tx}")
    print((await flavour.state(message.enclave_address)).describe())
    return 0


async def _attestation(args: argparse.Namespace, message: Any, att: Any) -> Any:
    from executor.chain.enclave_key import EnclaveKey

    if args.self_sign_attestation is not None:
        if not args.pcrs:
            raise _usage("--pcrs", "required with --self-sign-attestation")
        print("!! TEST PATH: the attestation is signed with a local verifier key, not verified")
        attestation = att.self_sign(
            EnclaveKey.load(args.self_sign_attestation),
            message.enclave_public_key,
            att.parse_pcrs(args.pcrs),
        )
    elif args.attestation_json is not None:
        attestation = att.read_attestation_json(args.attestation_json)
    elif args.attestation_url and args.verifier_url:
        attestation = await att.fetch_and_verify(args.attestation_url, args.verifier_url)
    else:
        raise _usage(
            "--attestation-url",
            "the production TeeManager needs the enclave's attestation: pass --attestation-url "
            "and --verifier-url, or --attestation-json",
        )
    if attestation.enclave_public_key != message.enclave_public_key:
        raise att.AttestationError(
            f"the attestation is for the key 0x{attestation.enclave_public_key.hex()}, not for "
            f"this node's enclave key 0x{message.enclave_public_key.hex()}: the attestation "
            "server must attest the executor's own signing key"
        )
    return attestation


async def _drain(args: argparse.Namespace, flavour: Any) -> int:
    return await _simple(args, flavour, "drain", "drained")


async def _revive(args: argparse.Namespace, flavour: Any) -> int:
    return await _simple(args, flavour, "revive", "revived")


async def _deregister(args: argparse.Namespace, flavour: Any) -> int:
    enclave = await _enclave_address(args)
    state = await flavour.state(enclave)
    if state.owner is None:
        raise ExecutorError(state.describe())
    if flavour.kind == "production" and not state.draining:
        raise ExecutorError(
            f"{state.describe()}: the production TeeManager deregisters only a draining node; "
            "run `oyster-executor owner drain` first (and let its running jobs finish)"
        )
    tx = await flavour.deregister(enclave)
    print(f"deregistered in tx {tx}")
    print((await flavour.state(enclave)).describe())
    return 0


async def _simple(args: argparse.Namespace, flavour: Any, verb: str, done: str) -> int:
    enclave = await _enclave_address(args)
    tx = await getattr(flavour, verb)(enclave)
    print(f"{done} in tx {tx}")
    print((await flavour.state(enclave)).describe())
    return 0


async def _status(args: argparse.Namespace, flavour: Any) -> int:
    state = await flavour.state(await _enclave_address(args))
    print(state.describe())
    return 0 if state.owner is not None else 1


def _production_only(flavour: Any, what: str) -> None:
    if flavour.kind != "production":
        raise ExecutorError(f"{what}: the {flavour.kind} TeeManager holds no stake")


async def _add_stake(args: argparse.Namespace, flavour: Any) -> int:
    _production_only(flavour, "add-stake")
    enclave = await _enclave_address(args)
    approval = await flavour.ensure_allowance(args.amount)
    if approval:
        print(f"approved {args.amount} in tx {approval}")
    print(f"stake added in tx {await flavour.add_stake(enclave, args.amount)}")
    print((await flavour.state(enclave)).describe())
    return 0


async def _withdraw_stake(args: argparse.Namespace, flavour: Any) -> int:
    _production_only(flavour, "withdraw-stake")
    enclave = await _enclave_address(args)
    state = await flavour.state(enclave)
    if not state.draining:
        raise ExecutorError(
            f"{state.describe()}: stake can be withdrawn only from a draining node; "
            "run `oyster-executor owner drain` first"
        )
    print(f"stake withdrawn in tx {await flavour.withdraw_stake(enclave, args.amount)}")
    print((await flavour.state(enclave)).describe())
    return 0


_ACTIONS = {
    "drain": _drain,
    "revive": _revive,
    "deregister": _deregister,
    "status": _status,
    "add-stake": _add_stake,
    "withdraw-stake": _withdraw_stake,
}
