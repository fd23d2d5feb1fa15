"""Build-side tooling of the enclave image: a private Docker engine, a local base, a staged
context, the build, and the manifest of the image's files (the Makefile and
tests/test_enclave_image.py use it).

    python3 enclave/image_tool.py manifest IMAGE       # "sha256  mode  path" of every file, sorted
    python3 enclave/image_tool.py build TAG [--base IMAGE] [--ca FILE] [--no-cache]

Everything runs against ``DOCKER_HOST`` (the default engine unless set). :class:`PrivateEngine`
starts a dockerd of its own (own data root and socket, no iptables, no bridge: it changes nothing
in the host's network) and stops it.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LOCAL_BASE = "oyster-base:bookworm-local"
SKIPPED_PREFIXES = ("proc/", "sys/", "dev/")
# Docker writes these into every container at creation (they are not the image's).
SKIPPED_FILES = {"etc/hostname", "etc/hosts", "etc/resolv.conf", ".dockerenv"}


def docker(
    *args: str, env: dict[str, str] | None = None, **kwargs: Any
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["docker", *args], env=env or os.environ.copy(), check=True, **kwargs)


class PrivateEngine:
    """A dockerd of its own under ``folder``: ``with PrivateEngine(folder) as env:`` gives the
    environment (``DOCKER_HOST``) for the docker CLI; the daemon is stopped on exit."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.socket = folder / "docker.sock"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> dict[str, str]:
        self.folder.mkdir(parents=True, exist_ok=True)
        with (self.folder / "dockerd.log").open("ab") as log:  # the child keeps its own copy
            self.process = subprocess.Popen(
                [
                    "dockerd",
                    "--iptables=false",
                    "--ip6tables=false",
                    "--bridge=none",
                    "--data-root",
                    str(self.folder / "data"),
                    "--exec-root",
                    str(self.folder / "exec"),
                    "--pidfile",
                    str(self.folder / "dockerd.pid"),
                    "--host",
                    f"unix://{self.socket}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        env = {**os.environ, "DOCKER_HOST": f"unix://{self.socket}"}
        give_up = time.monotonic() + 60
        while subprocess.run(["docker", "info"], env=env, capture_output=True).returncode != 0:
            if self.process.poll() is not None or time.monotonic() > give_up:
                self.__exit__()
                raise RuntimeError(f"dockerd did not start: see {self.folder / 'dockerd.log'}")
            time.sleep(0.5)
        return env

    def __exit__(self, *_: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        # dockerd leaves its default network namespace mounted under the exec root: unmount
        # whatever it left under this folder, so that nothing of the engine outlives it.
        with open("/proc/self/mounts") as mounts:
            left = [line.split()[1] for line in mounts if f" {self.folder}/" in line]
        for mountpoint in reversed(left):
            subprocess.run(["umount", mountpoint], capture_output=True)


def make_local_base(env: dict[str, str], cache: Path) -> str:
    """Debian bookworm (debootstrap minbase) imported as LOCAL_BASE; the root tree is cached."""
    have = subprocess.run(["docker", "image", "inspect", LOCAL_BASE], env=env, capture_output=True)
    if have.returncode == 0:
        return LOCAL_BASE
    rootfs = cache / "bookworm-rootfs"
    if not (rootfs / "usr" / "bin" / "apt-get").exists():
        shutil.rmtree(rootfs, ignore_errors=True)
        subprocess.run(
            ["debootstrap", "--variant=minbase", "bookworm", str(rootfs)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    assert tar.stdout is not None
    with tar.stdout:
        docker("import", "-", LOCAL_BASE, env=env, stdin=tar.stdout, stdout=subprocess.DEVNULL)
    if tar.wait() != 0:
        raise RuntimeError("tar of the debootstrap tree failed")
    return LOCAL_BASE


def stage_context(folder: Path, ca: Path | None = None) -> Path:
    """The tracked (and new, not ignored) files of the checkout, plus the CA bundle if given."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    files = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, files):
        source = ROOT / name
        if source.is_file():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, folder / name)
    if ca is not None:
        shutil.copyfile(ca, folder / "enclave" / "build-ca" / "ca.crt")
    return folder


def build(
    env: dict[str, str],
    tag: str,
    context: Path,
    *,
    base: str | None = None,
    ca: bool = False,
    no_cache: bool = False,
    log: Path | None = None,
) -> float:
    """``docker build`` of Dockerfile.nitro; returns the seconds it took."""
    args = ["build", "--network=host", "-f", "Dockerfile.nitro", "-t", tag]
    if base:
        args += ["--build-arg", f"BASE={base}"]
    if ca:
        args += ["--build-arg", "BUILD_CA=ca.crt"]
    if no_cache:
        args += ["--no-cache"]
    start = time.monotonic()
    with open(log or os.devnull, "ab") as out:
        docker(*args, ".", env=env, cwd=context, stdout=out, stderr=subprocess.STDOUT)
    return time.monotonic() - start


def manifest(env: dict[str, str], image: str) -> list[str]:
    """``sha256 mode path`` (symlinks: ``-> target``) of every file of ``image``, sorted."""
    container = subprocess.run(
        ["docker", "create", image], env=env, check=True, capture_output=True, text=True
    ).stdout.strip()
    try:
        export = subprocess.Popen(["docker", "export", container], env=env, stdout=subprocess.PIPE)
        lines = []
        assert export.stdout is not None
        with export.stdout, tarfile.open(fileobj=export.stdout, mode="r|") as tar:
            for member in tar:
                name = member.name.lstrip("./")
                if not name or name.startswith(SKIPPED_PREFIXES) or name in SKIPPED_FILES:
                    continue
                mode = f"{member.mode:04o}"
                if member.isfile():
                    digest = hashlib.sha256()
                    extracted = tar.extractfile(member)
                    assert extracted is not None
                    while chunk := extracted.read(1 << 20):
                        digest.update(chunk)
                    lines.append(f"{digest.hexdigest()}  {mode}  {name}")
                elif member.issym() or member.islnk():
                    lines.append(f"{'link':<64}  {mode}  {name} -> {member.linkname}")
                elif member.isdir():
                    lines.append(f"{'dir':<64}  {mode}  {name}/")
        if export.wait() != 0:
            raise RuntimeError("docker export failed")
    finally:
        subprocess.run(["docker", "rm", container], env=env, capture_output=True)
    return sorted(lines, key=lambda line: line[68:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("manifest", help="hash every file of an image")
    listing.add_argument("image")
    make = commands.add_parser("build", help="build from a staged copy of the checkout")
    make.add_argument("tag")
    make.add_argument("--base", help="base image (BASE build argument)")
    make.add_argument("--ca", type=Path, help="CA bundle the build trusts (BUILD_CA)")
    make.add_argument("--no-cache", action="store_true")
    args = parser.parse_args(argv)
    env = os.environ.copy()
    if args.command == "manifest":
        for line in manifest(env, args.image):
            print(line)
        return 0
    with tempfile.TemporaryDirectory(prefix="oyster-image-context-") as folder:
        context = stage_context(Path(folder) / "context", args.ca)
        seconds = build(
            env,
            args.tag,
            context,
            base=args.base,
            ca=args.ca is not None,
            no_cache=args.no_cache,
            log=Path("/dev/stdout"),
        )
    print(f"built {args.tag} in {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
