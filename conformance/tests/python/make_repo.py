#!/usr/bin/env python3
"""Build TUF repositories with python-tuf for the SecureEV-OTA interop tests.

    make_repo.py build OUT
        Writes OUT/good/ (a valid repository) and one folder per attack,
        OUT/<attack>/, each a full copy of the repository with one thing
        tampered with. Every folder holds

            initial_root.json        the root a client starts from (1.root.json)
            metadata/                what a static server serves as metadata
            targets/                 what it serves as targets (hash-prefixed)

        and OUT/manifest.json says which targets exist and, for each attack,
        which step must fail with which error of the Rust core.

    make_repo.py ngclient BASE_URL OUT
        Runs python-tuf's own client (tuf.ngclient) against every folder of OUT
        served at BASE_URL/<folder>/ and prints, as JSON, whether it accepted
        each: the reference implementation's verdict on the same fixtures.

Every role uses ECDSA P-256 keys (keytype "ecdsa", scheme
"ecdsa-sha2-nistp256"), generated fresh on each run. The repository uses
consistent snapshots: metadata as <version>.<role>.json (timestamp.json
unversioned), targets as <dir>/<sha256>.<file name>.
"""

import datetime
import hashlib
import json
import os
import shutil
import sys
import tempfile
from urllib import parse

from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

NOW = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
EXPIRES = NOW + datetime.timedelta(days=30)
EXPIRED = NOW - datetime.timedelta(days=1)

TOP_TARGET = "hello.txt"
TOP_CONTENT = b"hello from a python-tuf repository\n"
DELEGATED_ROLE = "firmware"
DELEGATED_PATHS = ["firmware/*"]
DELEGATED_TARGET = "firmware/ecu-a.bin"
DELEGATED_CONTENT = bytes(range(256)) * 8
# Listed before firmware, but its pattern does not match the firmware target:
# a correct pre-order search never fetches it for firmware/ecu-a.bin.
DOCS_ROLE = "docs"
DOCS_PATHS = ["*.md", "docs/*"]

# Attack folders: name -> (step that must fail, target or None, Rust error
# variant, role named in the error or None, first refresh against good/?).
ATTACKS = {
    "target-length-mismatch": ("download", TOP_TARGET, "LengthMismatch", None, False),
    "target-hash-mismatch": ("download", TOP_TARGET, "HashMismatch", None, False),
    "unknown-hash-algorithm": ("download", TOP_TARGET, "UnsupportedHash", None, False),
    "delegated-wrong-key": ("download", DELEGATED_TARGET, "ThresholdNotMet", DELEGATED_ROLE, False),
    "timestamp-wrong-key": ("refresh", None, "ThresholdNotMet", "timestamp", False),
    "root-not-cross-signed": ("refresh", None, "ThresholdNotMet", "root", False),
    "expired-timestamp": ("refresh", None, "Expired", "timestamp", False),
    "snapshot-hash-mismatch": ("refresh", None, "HashMismatch", None, False),
    "snapshot-version-mismatch": ("refresh", None, "VersionMismatch", "snapshot", False),
    "targets-version-mismatch": ("refresh", None, "VersionMismatch", "targets", False),
    "snapshot-rollback": ("refresh", None, "Rollback", "snapshot", True),
    "timestamp-rollback": ("refresh", None, "Rollback", "timestamp", True),
}

# Attacks that python-tuf itself does not treat as attacks: it implements
# blake2b-256, which our core deliberately does not (sha256 and sha512 only).
PYTHON_TUF_ACCEPTS = {"unknown-hash-algorithm"}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def signed_bytes(signed, *signers) -> bytes:
    md = Metadata(signed)
    for signer in signers:
        md.sign(signer, append=True)
    return md.to_bytes(JSONSerializer())


def meta(data: bytes, version: int) -> MetaFile:
    return MetaFile(version=version, length=len(data), hashes={"sha256": sha256(data)})


def hashed_name(path: str, digest: str) -> str:
    directory, sep, name = path.rpartition("/")
    return f"{directory}{sep}{digest}.{name}"


class Keys:
    def __init__(self) -> None:
        gen = CryptoSigner.generate_ecdsa
        self.root1, self.root2 = gen(), gen()
        self.timestamp1, self.timestamp2 = gen(), gen()
        self.snapshot, self.targets = gen(), gen()
        self.firmware, self.docs = gen(), gen()
        self.stranger = gen()
        for s in vars(self).values():
            assert s.public_key.keytype == "ecdsa", s.public_key.keytype
            assert s.public_key.scheme == "ecdsa-sha2-nistp256", s.public_key.scheme


class Repo:
    """Files of one repository: relative path -> bytes."""

    def __init__(self, keys: Keys) -> None:
        self.k = keys
        self.files: dict[str, bytes] = {}

    def md(self, name: str) -> bytes:
        return self.files[f"metadata/{name}"]

    def put_md(self, name: str, data: bytes) -> bytes:
        self.files[f"metadata/{name}"] = data
        return data

    def put_target(self, path: str, digest: str, data: bytes) -> None:
        self.files[f"targets/{hashed_name(path, digest)}"] = data

    # -- roles -----------------------------------------------------------------

    def root(self, version: int, root_key, timestamp_key, signers) -> bytes:
        root = Root(version=version, expires=EXPIRES, consistent_snapshot=True)
        root.add_key(root_key.public_key, "root")
        root.add_key(timestamp_key.public_key, "timestamp")
        root.add_key(self.k.snapshot.public_key, "snapshot")
        root.add_key(self.k.targets.public_key, "targets")
        return self.put_md(f"{version}.root.json", signed_bytes(root, *signers))

    def targets(self, version: int, targets: dict, delegated: bool, signer=None) -> bytes:
        delegations = None
        if delegated:
            roles = {
                DOCS_ROLE: DelegatedRole(DOCS_ROLE, [self.k.docs.public_key.keyid], 1, False, DOCS_PATHS),
                DELEGATED_ROLE: DelegatedRole(
                    DELEGATED_ROLE, [self.k.firmware.public_key.keyid], 1, True, DELEGATED_PATHS
                ),
            }
            keys = {s.public_key.keyid: s.public_key for s in (self.k.docs, self.k.firmware)}
            delegations = Delegations(keys, roles)
        signed = Targets(version=version, expires=EXPIRES, targets=targets, delegations=delegations)
        return self.put_md(f"{version}.targets.json", signed_bytes(signed, signer or self.k.targets))

    def delegated(self, role: str, version: int, targets: dict, signer) -> bytes:
        signed = Targets(version=version, expires=EXPIRES, targets=targets)
        return self.put_md(f"{version}.{parse.quote(role, '')}.json", signed_bytes(signed, signer))

    def snapshot(self, version: int, metas: dict, expires=EXPIRES) -> bytes:
        signed = Snapshot(version=version, expires=expires, meta=metas)
        return self.put_md(f"{version}.snapshot.json", signed_bytes(signed, self.k.snapshot))

    def timestamp(self, version: int, snapshot_meta: MetaFile, expires=EXPIRES, signer=None) -> bytes:
        signed = Timestamp(version=version, expires=expires, snapshot_meta=snapshot_meta)
        return self.put_md("timestamp.json", signed_bytes(signed, signer or self.k.timestamp2))

    def write(self, folder: str) -> None:
        for rel, data in self.files.items():
            path = os.path.join(folder, *rel.split("/"))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
        shutil.copyfile(os.path.join(folder, "metadata", "1.root.json"), os.path.join(folder, "initial_root.json"))


def good_repo(keys: Keys) -> tuple[Repo, dict]:
    """Two published states; the second is current.

    Root rotates 1 -> 2 (new root key, new timestamp key; 2.root.json signed by
    both root keys). State 1: targets v1 (hello.txt), snapshot v1. State 2:
    targets v2 adds delegations (docs: *.md, docs/*; firmware: firmware/*,
    terminating), firmware v1 lists the firmware image, snapshot v2, timestamp
    v2. Snapshot and timestamp list length and sha256 of what they point at.
    """
    r = Repo(keys)
    k = keys
    r.root(1, k.root1, k.timestamp1, [k.root1])
    r.root(2, k.root2, k.timestamp2, [k.root1, k.root2])

    top = TargetFile.from_data(TOP_TARGET, TOP_CONTENT, ["sha256"])
    fw = TargetFile.from_data(DELEGATED_TARGET, DELEGATED_CONTENT, ["sha256", "sha512"])
    r.put_target(TOP_TARGET, top.hashes["sha256"], TOP_CONTENT)
    r.put_target(DELEGATED_TARGET, fw.hashes["sha256"], DELEGATED_CONTENT)

    t1 = r.targets(1, {TOP_TARGET: top}, delegated=False)
    r.snapshot(1, {"targets.json": meta(t1, 1)})

    t2 = r.targets(2, {TOP_TARGET: top}, delegated=True)
    fw1 = r.delegated(DELEGATED_ROLE, 1, {DELEGATED_TARGET: fw}, k.firmware)
    docs1 = r.delegated(DOCS_ROLE, 1, {}, k.docs)
    s2 = r.snapshot(
        2,
        {
            "targets.json": meta(t2, 2),
            f"{DELEGATED_ROLE}.json": meta(fw1, 1),
            f"{DOCS_ROLE}.json": meta(docs1, 1),
        },
    )
    r.timestamp(2, meta(s2, 2))
    state = {"top": top, "fw": fw, "t2": t2, "fw1": fw1, "docs1": docs1, "s2": s2}
    return r, state


def snapshot_metas(t: bytes, tv: int, fw: bytes, fwv: int, docs: bytes) -> dict:
    return {
        "targets.json": meta(t, tv),
        f"{DELEGATED_ROLE}.json": meta(fw, fwv),
        f"{DOCS_ROLE}.json": meta(docs, 1),
    }


def publish_v3(r: Repo, st: dict, targets_bytes: bytes, targets_version: int = 3) -> None:
    """Snapshot v3 and timestamp v3 over new targets metadata."""
    s3 = r.snapshot(3, snapshot_metas(targets_bytes, targets_version, st["fw1"], 1, st["docs1"]))
    r.timestamp(3, meta(s3, 3))


def attack_repo(name: str, keys: Keys) -> Repo:
    r, st = good_repo(keys)
    k = keys
    top: TargetFile = st["top"]
    if name == "target-length-mismatch":
        bad = TargetFile(top.length + 1, dict(top.hashes), TOP_TARGET)
        publish_v3(r, st, r.targets(3, {TOP_TARGET: bad}, delegated=True))
    elif name == "target-hash-mismatch":
        # Same length, other bytes, under the signed hash's file name.
        evil = bytes(b ^ 0x20 for b in TOP_CONTENT)
        r.put_target(TOP_TARGET, top.hashes["sha256"], evil)
    elif name == "unknown-hash-algorithm":
        digest = hashlib.blake2b(TOP_CONTENT, digest_size=32).hexdigest()
        odd = TargetFile(len(TOP_CONTENT), {"blake2b-256": digest}, TOP_TARGET)
        r.put_target(TOP_TARGET, digest, TOP_CONTENT)
        publish_v3(r, st, r.targets(3, {TOP_TARGET: odd}, delegated=True))
    elif name == "delegated-wrong-key":
        fw2 = r.delegated(DELEGATED_ROLE, 2, {DELEGATED_TARGET: st["fw"]}, k.targets)
        s3 = r.snapshot(3, snapshot_metas(st["t2"], 2, fw2, 2, st["docs1"]))
        r.timestamp(3, meta(s3, 3))
    elif name == "timestamp-wrong-key":
        r.timestamp(3, meta(st["s2"], 2), signer=k.stranger)
    elif name == "root-not-cross-signed":
        r.root(2, k.root2, k.timestamp2, [k.root2])
    elif name == "expired-timestamp":
        r.timestamp(3, meta(st["s2"], 2), expires=EXPIRED)
    elif name == "snapshot-hash-mismatch":
        # A validly signed snapshot v2 with other content than timestamp v2
        # vouches for (here: a different expiry), of the same length so that
        # only the hash tells them apart. DER ECDSA signatures vary in length:
        # sign until the lengths agree.
        other = Snapshot(
            version=2,
            expires=EXPIRES + datetime.timedelta(days=1),
            meta={
                "targets.json": meta(st["t2"], 2),
                f"{DELEGATED_ROLE}.json": meta(st["fw1"], 1),
                f"{DOCS_ROLE}.json": meta(st["docs1"], 1),
            },
        )
        for _ in range(1000):
            data = signed_bytes(other, k.snapshot)
            if len(data) == len(st["s2"]):
                break
        else:
            raise RuntimeError("could not match the snapshot length")
        r.put_md("2.snapshot.json", data)
    elif name == "snapshot-version-mismatch":
        # Timestamp v3 lists snapshot v3; 3.snapshot.json says version 4.
        s = Snapshot(version=4, expires=EXPIRES, meta=snapshot_metas(st["t2"], 2, st["fw1"], 1, st["docs1"]))
        s3 = r.put_md("3.snapshot.json", signed_bytes(s, k.snapshot))
        r.timestamp(3, meta(s3, 3))
    elif name == "targets-version-mismatch":
        # Mix-and-match: snapshot v3 lists targets v3, but 3.targets.json is
        # the (validly signed) targets v2.
        t3 = r.put_md("3.targets.json", st["t2"])
        publish_v3(r, st, t3)
    elif name == "snapshot-rollback":
        # A newer timestamp that points back at snapshot v1.
        r.timestamp(3, meta(r.md("1.snapshot.json"), 1))
    elif name == "timestamp-rollback":
        r.timestamp(1, meta(r.md("1.snapshot.json"), 1))
    else:
        raise ValueError(name)
    return r


def build(out: str) -> None:
    keys = Keys()
    os.makedirs(out, exist_ok=True)
    good, st = good_repo(keys)
    good.write(os.path.join(out, "good"))
    for name in ATTACKS:
        attack_repo(name, keys).write(os.path.join(out, name))
    manifest = {
        "generated_with": {"tuf": _version("tuf"), "securesystemslib": _version("securesystemslib")},
        "targets": {
            TOP_TARGET: {"content": TOP_CONTENT.hex(), "role": "targets"},
            DELEGATED_TARGET: {"content": DELEGATED_CONTENT.hex(), "role": DELEGATED_ROLE},
        },
        "delegated_role": DELEGATED_ROLE,
        "unmatched_role": DOCS_ROLE,
        "versions": {"root": 2, "timestamp": 2, "snapshot": 2, "targets": 2, DELEGATED_ROLE: 1},
        "attacks": [
            {
                "name": name,
                "step": step,
                "target": target,
                "error": error,
                "role": role,
                "after_good": after_good,
                "python_tuf_accepts": name in PYTHON_TUF_ACCEPTS,
            }
            for name, (step, target, error, role, after_good) in ATTACKS.items()
        ],
    }
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


def ngclient(base_url: str, out: str) -> None:
    """python-tuf's verdict on each folder, the way our tests run our client."""
    from tuf.ngclient import Updater

    with open(os.path.join(out, "manifest.json")) as f:
        manifest = json.load(f)
    runs = [("good", "download", [TOP_TARGET, DELEGATED_TARGET], False)]
    runs += [(a["name"], a["step"], [a["target"]] if a["target"] else [], a["after_good"]) for a in manifest["attacks"]]
    verdicts = {}
    for folder, step, targets, after_good in runs:
        with tempfile.TemporaryDirectory() as tmp:
            md_dir = os.path.join(tmp, "metadata")
            tg_dir = os.path.join(tmp, "targets")
            os.makedirs(md_dir)
            os.makedirs(tg_dir)
            shutil.copyfile(os.path.join(out, folder, "initial_root.json"), os.path.join(md_dir, "root.json"))

            def run(repo: str, step: str, targets: list) -> str | None:
                try:
                    u = Updater(
                        md_dir,
                        f"{base_url}/{repo}/metadata/",
                        tg_dir,
                        f"{base_url}/{repo}/targets/",
                        bootstrap=None,
                    )
                    u.refresh()
                    if step == "download":
                        for t in targets:
                            info = u.get_targetinfo(t)
                            if info is None:
                                return f"{t} not found"
                            if u.find_cached_target(info) is None:
                                u.download_target(info)
                    return None
                except Exception as e:  # noqa: BLE001 - any failure is a rejection
                    return f"{type(e).__name__}: {e}"

            if after_good:
                first = run("good", "refresh", [])
                if first is not None:
                    verdicts[folder] = {"accepted": False, "error": f"good refresh failed: {first}"}
                    continue
            err = run(folder, step, targets)
            verdicts[folder] = {"accepted": err is None, "error": err}
    json.dump(verdicts, sys.stdout, indent=1)
    print()


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[1] == "build":
        build(argv[2])
        return 0
    if len(argv) == 4 and argv[1] == "ngclient":
        ngclient(argv[2].rstrip("/"), argv[3])
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
