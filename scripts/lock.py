"""Resolve mfpt's dependencies into an exact, hashed lock (`make lock`), or a throwaway newest set (`make test-latest`).

The lock covers Python 3.11 on x86_64 Linux with the CPU build of torch 2.13.0: pyproject.toml's dependencies, its
`test`, `offline` and `tracking` extras and requirements/lock.in, minus requirements/lock-overrides.txt. It is resolved by
`uv pip compile` (uv comes with flwr). A lock that exists already is kept wherever pyproject.toml still allows it,
so only what had to move moves; `--upgrade` re-resolves everything to the newest allowed versions.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements" / "lock.txt"
# The CPU wheel of torch is not on PyPI (PyPI's Linux torch is the CUDA build): a folder holding
# torch-2.13.0+cpu-cp311-*.whl, by default pip's find-links folder on these machines.
TORCH_WHEELS = Path(os.environ.get("MFPT_TORCH_WHEELS", "/opt/wheels"))
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def compile_command(out: Path, upgrade: bool, hashes: bool, packages: tuple[str, ...] = ()) -> list[str]:
    """The `uv pip compile` command line that writes the lock to `out` (moving only `packages`, when given, and what
    they need)."""
    from uv import find_uv_bin

    cmd = [
        find_uv_bin(), "pip", "compile", "pyproject.toml", "requirements/lock.in",
        "--extra", "test", "--extra", "offline", "--extra", "tracking",
        "--override", "requirements/lock-overrides.txt",
        "--python-version", "3.11", "--python-platform", "x86_64-manylinux_2_28",
        "--custom-compile-command", "make lock", "--quiet", "-o", str(out),
    ]
    if TORCH_WHEELS.is_dir():
        cmd += ["--find-links", str(TORCH_WHEELS)]
    if hashes:
        cmd.append("--generate-hashes")
    if upgrade:
        cmd.append("--upgrade")
    for package in packages:
        cmd += ["--upgrade-package", package]
    return cmd


def read_pins(path: Path) -> dict[str, str]:
    """{normalised package name: version} of every `name==version` line in a requirements file."""
    if not path.is_file():
        return {}
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        match = PIN.match(line)
        if match:
            pins[re.sub(r"[-_.]+", "-", match.group(1)).lower()] = match.group(2)
    return pins


def pin_changes(old: dict[str, str], new: dict[str, str]) -> list[str]:
    """One line per package added, removed or moved between two pin sets, sorted by name."""
    lines = []
    for name in sorted(set(old) | set(new)):
        before, after = old.get(name), new.get(name)
        if before == after:
            continue
        if before is None:
            lines.append(f"  + {name} {after}")
        elif after is None:
            lines.append(f"  - {name} {before}")
        else:
            lines.append(f"  ~ {name} {before} -> {after}")
    return lines


def releases_beyond_ranges(python: str = sys.executable) -> list[str]:
    """Direct dependencies whose newest release on the index lies outside pyproject.toml's range (one look-up each)."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.version import Version

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    lines = []
    for req in map(Requirement, deps):
        if not any(spec.operator in ("<", "<=", "==", "~=") for spec in req.specifier):
            continue
        proc = subprocess.run([python, "-m", "pip", "index", "versions", req.name], capture_output=True, text=True)
        match = re.search(rf"^{re.escape(req.name)} \(([^)]+)\)", proc.stdout, re.IGNORECASE | re.MULTILINE)
        if match and Version(match.group(1)) not in req.specifier:
            lines.append(f"  ! {req.name} {match.group(1)} is released; pyproject.toml allows {req.specifier}")
    return lines


def resolve(out: Path, upgrade: bool, hashes: bool, packages: tuple[str, ...] = ()) -> None:
    """Run the resolver; a failure prints uv's own explanation and exits 2."""
    proc = subprocess.run(compile_command(out, upgrade, hashes, packages), cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        sys.exit(f"error: the dependencies in pyproject.toml cannot be resolved (uv exit {proc.returncode}); see above.")


def main(argv: list[str] | None = None) -> int:
    """Write the lock (default) or a newest-allowed requirements file, and print what differs from the lock."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upgrade", action="store_true", help="move every package to the newest allowed version")
    parser.add_argument("--upgrade-package", action="append", default=[], metavar="NAME",
                        help="move this package (and what it needs) to the newest allowed version (repeatable)")
    parser.add_argument("--newest", type=Path, metavar="FILE",
                        help="write the newest versions the ranges allow to FILE (no hashes); the lock is untouched")
    args = parser.parse_args(argv)

    before = read_pins(LOCK)
    if args.newest:
        resolve(args.newest, upgrade=True, hashes=False)
        changes = pin_changes(before, read_pins(args.newest)) or ["  no version differs from the lock"]
        print(f"newest allowed versions against {LOCK.relative_to(ROOT)}:")
        changes += releases_beyond_ranges()
    else:
        resolve(LOCK, upgrade=args.upgrade, hashes=True, packages=tuple(args.upgrade_package))
        changes = pin_changes(before, read_pins(LOCK))
        print(f"{LOCK.relative_to(ROOT)}:")
    print("\n".join(changes) if changes else "  no version changed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
