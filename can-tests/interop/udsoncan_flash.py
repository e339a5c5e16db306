#!/usr/bin/env python3
"""Flash a SecureEV-OTA secondary ECU with udsoncan over kernel ISO-TP.

An independent tester (Primary) written from docs/secondary-protocol.md only:
PyPI `udsoncan` (Client, services, DID codecs) over `can-isotp`'s kernel
CAN_ISOTP socket (`isotp.socket`, udsoncan's IsoTPSocketConnection). It does
not import or read anything of the Rust implementation.

    udsoncan_flash.py --iface vcan0 --tx-id 0x7E0 --rx-id 0x7E8 [--fd]
                      --secret HEX --metadata director-targets.json
                      --image fw.bin --time UNIX [--scenario NAME] ...

`--tx-id` is the id this tester sends on (the ECU's rx id). Scenarios and
what they assert (section numbers of docs/secondary-protocol.md):

  flash           the sequence of §9.1: identity DIDs (§4), 10 02, 27 11/12
                  with the HMAC-SHA256 key (§2.1), 2E F1A5 time, Director
                  targets by 2E F1C3 or by 34/36/37 to 0xFE00F1C3 (§5.1),
                  31 D000 → result 00, 31 FF00, 34/36/37 of the image in blocks
                  of maxNumberOfBlockLength − 2 bytes, 31 D001 → 00, 31 FF01,
                  31 D002 → 00, 11 01, then 10 03 and the signed version report
                  read in chunks (§5.3) with the installed image in it.
  wrong-key       27 12 with a wrong key → 7F 27 35; the spent seed's right key
                  → 7F 27 24; after 10 02 a key of 15 bytes → 35 (the counter
                  survives the session change); the third wrong key → 7F 27 36;
                  then 27 11 → 7F 27 37; and 34 → 7F 34 33 (still locked).
  no-security     in the programming session without 27: 2E F1A5 → 7F 2E 33;
                  2E F1C3 (signed metadata needs no security access) → 6E;
                  31 D000 → result 22 no-time; 31 FF00, 34, 36, 37, 31 D002
                  → 33 each.
  hash-mismatch   the image has the target's length but other bytes: the
                  download is accepted, 31 D001 → result 10 arbitrary-software,
                  31 D002 → 7F 31 22; the report names arbitrary-software.
  wrong-size      the image's length differs from the target's: 31 FF00 and 34
                  with that size → 7F 31 31 / 7F 34 31 (§5.1, §7).
  other-ecu       the Director targets name only another ECU: 31 D000 → result
                  01 no-update; then 34 → 7F 34 22 and 31 D002 → 7F 31 22 (§7).
  wrong-hardware  the targets name this ECU with another hardware ID: 31 D000 →
                  result 15 wrong-hardware-id; 34 → 7F 34 22; the report names
                  wrong-hardware-id.

Exit status: 0 when every expectation held, 1 when one did not (a line
starting with FAIL says which), 2 for bad arguments.
"""

import argparse
import hashlib
import hmac
import json
import logging
import secrets
import struct
import sys
import time

import isotp
import udsoncan
from udsoncan import DataFormatIdentifier, DidCodec, MemoryLocation
from udsoncan.client import Client
from udsoncan.connections import IsoTPSocketConnection
from udsoncan.exceptions import NegativeResponseException, TimeoutException

# ---- docs/secondary-protocol.md -------------------------------------------------

SESSION_DEFAULT, SESSION_PROGRAMMING, SESSION_EXTENDED = 0x01, 0x02, 0x03
RESET_HARD = 0x01
# §2.1: requestSeed 0x11, sendKey 0x12; key = HMAC-SHA256(secret, seed || 0x11)[:16].
SECURITY_LEVEL = 0x11
KEY_LEN = 16
SEED_LEN = 16

# §4
DID_ECU_SERIAL = 0xF1A0
DID_HARDWARE_ID = 0xF1A1
DID_PUBLIC_KEY = 0xF1A2
DID_CAPABILITIES = 0xF1A4
DID_TIME = 0xF1A5
DID_LAST_RESULT = 0xF1A6
DID_REPORT_CHUNK = 0xF1B0  # + n, n < 16
DID_DIRECTOR_TARGETS = 0xF1C3

# §6
RID_ERASE = 0xFF00
RID_CHECK_DEPENDENCIES = 0xFF01
RID_VERIFY_METADATA = 0xD000
RID_VERIFY_IMAGE = 0xD001
RID_ACTIVATE = 0xD002
RID_GENERATE_REPORT = 0xD003

# §5.1
ALFID = 0x44
ADDRESS_IMAGE = 0x0000_0000
METADATA_BASE = 0xFE00_0000
DFI_PLAIN = 0x00

RESULTS = {
    0x00: "ok",
    0x01: "no-update",
    0x10: "arbitrary-software",
    0x11: "rollback",
    0x12: "freeze",
    0x13: "mix-and-match",
    0x14: "endless-data",
    0x15: "wrong-hardware-id",
    0x16: "wrong-ecu",
    0x17: "release-counter-rollback",
    0x20: "malformed",
    0x21: "missing-metadata",
    0x22: "no-time",
    0x23: "unsupported",
    0x2F: "failed",
}
RESULT_CODES = {name: code for code, name in RESULTS.items()}

NRC_BUSY = 0x21
NRC_CONDITIONS = 0x22
NRC_SEQUENCE = 0x24
NRC_OUT_OF_RANGE = 0x31
NRC_DENIED = 0x33
NRC_INVALID_KEY = 0x35
NRC_ATTEMPTS = 0x36
NRC_DELAY = 0x37
NRC_NAMES = {
    NRC_BUSY: "busyRepeatRequest",
    NRC_CONDITIONS: "conditionsNotCorrect",
    NRC_SEQUENCE: "requestSequenceError",
    NRC_OUT_OF_RANGE: "requestOutOfRange",
    NRC_DENIED: "securityAccessDenied",
    NRC_INVALID_KEY: "invalidKey",
    NRC_ATTEMPTS: "exceededNumberOfAttempts",
    NRC_DELAY: "requiredTimeDelayNotExpired",
}

# §3: the same request again after a timeout, 3 times; 50 ms after 0x21.
RETRIES = 3
BUSY_DELAY = 0.05
MAX_BUSY = 100

SCENARIOS = ("flash", "wrong-key", "no-security", "hash-mismatch", "wrong-size",
             "other-ecu", "wrong-hardware")
# What verify-metadata must answer in each scenario that runs it.
EXPECTED_VERIFY_METADATA = {
    "flash": "ok",
    "hash-mismatch": "ok",
    "wrong-size": "ok",
    "other-ecu": "no-update",
    "wrong-hardware": "wrong-hardware-id",
}


def security_key(secret: bytes, seed: bytes) -> bytes:
    """§2.1: the first 16 bytes of HMAC-SHA256(secret, seed || 0x11)."""
    return hmac.new(secret, seed + bytes([SECURITY_LEVEL]), hashlib.sha256).digest()[:KEY_LEN]


# ---- DID codecs ------------------------------------------------------------------

class RawCodec(DidCodec):
    """Variable-length bytes: the rest of the response (metadata, report chunks)."""

    def encode(self, value):
        return bytes(value)

    def decode(self, payload):
        return bytes(payload)

    def __len__(self):
        raise DidCodec.ReadAllRemainingData


class Utf8Codec(RawCodec):
    """Variable-length UTF-8 (serial, hardware ID, did:key)."""

    def encode(self, value):
        return value.encode("utf-8")

    def decode(self, payload):
        return bytes(payload).decode("utf-8")


class CapabilitiesCodec(DidCodec):
    """§4 0xF1A4: version u8, verification u8, max_pdu u32 BE, encryption u8, reserved u8."""

    def decode(self, payload):
        version, verification, max_pdu, encryption, _ = struct.unpack(">BBIBB", payload)
        return {
            "version": version,
            "verification": {1: "partial", 2: "full"}.get(verification, verification),
            "max_pdu": max_pdu,
            "encryption": encryption,
        }

    def __len__(self):
        return 8


class TimeCodec(DidCodec):
    """§4 0xF1A5: u64 BE Unix seconds."""

    def encode(self, value):
        return struct.pack(">Q", value)

    def decode(self, payload):
        return struct.unpack(">Q", payload)[0]

    def __len__(self):
        return 8


def did_codecs():
    codecs = {
        DID_ECU_SERIAL: Utf8Codec(),
        DID_HARDWARE_ID: Utf8Codec(),
        DID_PUBLIC_KEY: Utf8Codec(),
        DID_CAPABILITIES: CapabilitiesCodec(),
        DID_TIME: TimeCodec(),
        DID_LAST_RESULT: RawCodec(),
    }
    for did in range(0xF1C0, 0xF1C8):
        codecs[did] = RawCodec()
    for n in range(16):
        codecs[DID_REPORT_CHUNK + n] = RawCodec()
    return codecs


# ---- the tester ------------------------------------------------------------------

class Failure(Exception):
    """An expectation of the scenario did not hold."""


def tx_frames(iface):
    try:
        with open(f"/sys/class/net/{iface}/statistics/tx_packets") as f:
            return int(f.read().strip())
    except OSError:
        return 0


class Tester:
    def __init__(self, client, args, secret, image, metadata):
        self.c = client
        self.args = args
        self.secret = secret
        self.image = image
        self.metadata = metadata
        self.t0 = time.monotonic()
        self.n = 0
        self.max_pdu = 4095
        self.serial = None
        self.identity = {}
        self.stats = {"blocks": 0, "image_blocks": 0, "metadata_via": None}
        self.first_pending = None

    # -- output and plumbing

    def step(self, text):
        self.n += 1
        print(f"[{time.monotonic() - self.t0:8.3f} s] {self.n:2d}. {text}", flush=True)

    def note(self, text):
        print(f"{'':16}{text}", flush=True)

    def on_pending(self):
        """udsoncan's nrc78_callback: a 7F xx 78 arrived."""
        if self.first_pending is None:
            self.first_pending = time.monotonic()

    def call(self, fn, *args):
        """A request with the retries of §3: again after a timeout (3 times) and
        50 ms after 0x21 busyRepeatRequest. Also measures how long the ECU took
        to give a first response (0x78 or the answer) since the first send."""
        timeouts = busy = 0
        start, self.first_pending = time.monotonic(), None
        label = fn.__name__ + "".join(f" 0x{a:04X}" for a in args[:1] if isinstance(a, int))
        try:
            while True:
                try:
                    return fn(*args)
                except TimeoutException:
                    timeouts += 1
                    if timeouts > RETRIES:
                        raise
                    self.note(f"{label}: timeout, sending the request again "
                              f"({timeouts}/{RETRIES})")
                except NegativeResponseException as e:
                    if e.response.code == NRC_BUSY and busy < MAX_BUSY:
                        busy += 1
                        time.sleep(BUSY_DELAY)
                        continue
                    raise
        finally:
            first = (self.first_pending or time.monotonic()) - start
            slowest = self.stats.get("slowest_first_response")
            if slowest is None or first > slowest[0]:
                self.stats["slowest_first_response"] = [first, label]
            limit = self.args.max_first_response
            if limit is not None and first > limit:
                raise Failure(f"{label}: the first response (7F xx 78 or the answer) came after "
                              f"{first:.2f} s; §3 wants it within P2server, and this run "
                              f"allows {limit} s")

    def expect_nrc(self, label, sid, nrc, fn, *args):
        """`fn` must be answered 7F sid nrc."""
        try:
            self.call(fn, *args)
        except NegativeResponseException as e:
            if e.response.code == nrc:
                self.step(f"{label} → 7F {sid:02X} {nrc:02X} ({NRC_NAMES.get(nrc, '?')}) as expected")
                return
            raise Failure(f"{label}: expected 7F {sid:02X} {nrc:02X}, got 7F {sid:02X} "
                          f"{e.response.code:02X} ({e.response.code_name})")
        raise Failure(f"{label}: expected 7F {sid:02X} {nrc:02X}, got a positive response")

    # -- §4 identity

    def read_identity(self):
        read = lambda did: self.call(self.c.read_data_by_identifier_first, did)
        self.serial = read(DID_ECU_SERIAL)
        hw = read(DID_HARDWARE_ID)
        did_key = read(DID_PUBLIC_KEY)
        caps = read(DID_CAPABILITIES)
        self.max_pdu = caps["max_pdu"]
        self.identity = {"serial": self.serial, "hardware_id": hw, "did": did_key,
                         "capabilities": caps}
        self.step(f"22 F1A0/F1A1/F1A2/F1A4 identity: serial {self.serial!r}, hardware {hw!r}, "
                  f"{did_key[:24]}…, capabilities {caps}")
        if caps["version"] != 1:
            raise Failure(f"protocol version {caps['version']}, this tester speaks 1")
        if self.args.expect_serial is not None and self.serial != self.args.expect_serial:
            raise Failure(f"serial {self.serial!r}, expected {self.args.expect_serial!r}")
        if self.args.expect_hardware_id is not None and hw != self.args.expect_hardware_id:
            raise Failure(f"hardware ID {hw!r}, expected {self.args.expect_hardware_id!r}")
        if not did_key.startswith("did:key:z"):
            raise Failure(f"0xF1A2 is not a did:key: {did_key!r}")

    # -- sessions and security access

    def session(self, session):
        r = self.call(self.c.change_session, session)
        p2, p2_star = r.service_data.p2_server_max, r.service_data.p2_star_server_max
        # §3: P2client = max(1 s, P2server), P2*client = max(10 s, P2*server);
        # --p2/--p2-star raise the floors (emulated CAN is slow).
        self.c.set_config("p2_timeout", max(self.args.p2, p2))
        self.c.set_config("p2_star_timeout", max(self.args.p2_star, p2_star))
        self.step(f"10 {session:02X} DiagnosticSessionControl → 50 {session:02X}, "
                  f"P2server {p2 * 1000:.0f} ms, P2*server {p2_star * 1000:.0f} ms")

    def request_seed(self):
        seed = self.call(self.c.request_seed, SECURITY_LEVEL).service_data.seed
        if len(seed) != SEED_LEN:
            raise Failure(f"seed of {len(seed)} bytes, §2.1 says {SEED_LEN}")
        return seed

    def unlock(self):
        seed = self.request_seed()
        if seed == bytes(SEED_LEN):
            self.step("27 11 → all-zero seed: already unlocked")
            return
        # Not through call(): a lost key restarts at requestSeed, never resends.
        self.c.send_key(SECURITY_LEVEL + 1, security_key(self.secret, seed))
        self.step(f"27 11 → seed {seed.hex()}; 27 12 HMAC-SHA256 key → 67 12 unlocked")

    # -- writes, routines, downloads

    def write_time(self):
        self.call(self.c.write_data_by_identifier, DID_TIME, self.args.time)
        self.step(f"2E F1A5 time {self.args.time} → 6E F1A5")

    def send_metadata(self):
        """§5.1: 2E when 3 + length ≤ max_pdu, else download to 0xFE00_0000 | DID."""
        via = self.args.metadata_via
        if via == "auto":
            via = "did" if 3 + len(self.metadata) <= self.max_pdu else "download"
        if via == "did":
            self.call(self.c.write_data_by_identifier, DID_DIRECTOR_TARGETS, self.metadata)
            self.step(f"2E F1C3 Director targets ({len(self.metadata)} bytes) → 6E F1C3")
        else:
            blocks = self.download(METADATA_BASE | DID_DIRECTOR_TARGETS, self.metadata)
            self.step(f"34/36/37 Director targets ({len(self.metadata)} bytes) to "
                      f"0x{METADATA_BASE | DID_DIRECTOR_TARGETS:08X} in {blocks} blocks")
        self.stats["metadata_via"] = via

    def routine(self, rid, data=b"", expect=None):
        r = self.call(self.c.start_routine, rid, data)
        status = r.service_data.routine_status_record
        code = status[0] if status else 0x00
        detail = status[1:].decode("utf-8", "replace")
        name = RESULTS.get(code, "unknown")
        self.step(f"31 01 {rid:04X} → 71 01 {rid:04X} {code:02X} {name}"
                  + (f": {detail}" if detail and rid != RID_GENERATE_REPORT else ""))
        if expect is not None and name != expect:
            raise Failure(f"routine 0x{rid:04X}: result {code:02X} {name}, expected {expect}")
        return code, status

    def erase_record(self, size):
        return bytes([ALFID]) + struct.pack(">II", ADDRESS_IMAGE, size)

    def download(self, address, data, dfi=DFI_PLAIN):
        """§5.1: 34 DFI 44 addr size; 36 blocks of ≤ maxNumberOfBlockLength − 2
        bytes (also ≤ max_pdu − 2), counters from 1 wrapping 0xFF → 0x00; 37."""
        loc = MemoryLocation(address, len(data), address_format=32, memorysize_format=32)
        r = self.call(self.c.request_download, loc,
                      DataFormatIdentifier(compression=dfi >> 4, encryption=dfi & 0xF))
        max_len = r.service_data.max_length
        per_block = min(max_len, self.max_pdu) - 2
        if per_block < 1:
            raise Failure(f"maxNumberOfBlockLength {max_len} leaves no room for data")
        self.note(f"34 {dfi:02X} 44 {address:08X} {len(data):08X} → 74, "
                  f"maxNumberOfBlockLength {max_len}: {per_block} data bytes per block")
        counter, blocks = 1, 0
        for off in range(0, len(data), per_block):
            # A repeat after a timeout carries the same counter; §5.1 says the
            # ECU acknowledges it without writing twice.
            self.call(self.c.transfer_data, counter, data[off:off + per_block])
            blocks += 1
            counter = (counter + 1) & 0xFF
        self.call(self.c.request_transfer_exit)
        self.stats["blocks"] += blocks
        return blocks

    # -- §5.3 report

    def read_report(self, expect_attack=None, expect_installed=None):
        self.session(SESSION_EXTENDED)
        nonce = secrets.token_bytes(16)
        _, status = self.routine(RID_GENERATE_REPORT, nonce, expect="ok")
        if len(status) != 40:
            raise Failure(f"D003 status record of {len(status)} bytes, §5.3 says 1 + 39")
        length, chunk_size, count = struct.unpack(">IHB", status[1:8])
        digest = status[8:40]
        if not 1 <= count <= 16 or chunk_size == 0 or -(-length // chunk_size) != count:
            raise Failure(f"inconsistent report info: {length} bytes, {count} × {chunk_size}")
        report = b""
        for n in range(count):
            chunk = self.call(self.c.read_data_by_identifier_first, DID_REPORT_CHUNK + n)
            want = min(chunk_size, length - n * chunk_size)
            if len(chunk) != want:
                raise Failure(f"chunk {n} has {len(chunk)} bytes, expected {want}")
            report += chunk
        if hashlib.sha256(report).digest() != digest:
            raise Failure("the report does not match its SHA-256")
        signed = json.loads(report)["signed"]
        self.step(f"22 F1B0…F1{0xB0 + count - 1:02X} report: {length} bytes in {count} chunk(s), "
                  f"SHA-256 ok; installed {(signed.get('installed_image') or {}).get('filepath')!r}, "
                  f"attacks {signed.get('attacks_detected')!r}")
        if signed.get("nonce") != nonce.hex():
            raise Failure(f"report nonce {signed.get('nonce')!r}, sent {nonce.hex()}")
        if signed.get("ecu_serial") != self.serial:
            raise Failure(f"report of ECU {signed.get('ecu_serial')!r}, not {self.serial!r}")
        if expect_attack is not None and expect_attack not in signed.get("attacks_detected", "").split(","):
            raise Failure(f"report's attacks_detected {signed.get('attacks_detected')!r} "
                          f"does not name {expect_attack}")
        if expect_installed is not None:
            name, length_, sha = expect_installed
            inst = signed.get("installed_image") or {}
            info = inst.get("fileinfo", {})
            if (inst.get("filepath"), info.get("length"), info.get("hashes", {}).get("sha256")) \
                    != (name, length_, sha):
                raise Failure(f"report's installed image {inst!r}, expected {name} "
                              f"({length_} bytes, sha256 {sha})")
        if self.args.report_out:
            with open(self.args.report_out, "wb") as f:
                f.write(report)
        return signed

    # -- the target the Director assigns to this ECU (from the signed JSON)

    def my_target(self):
        targets = json.loads(self.metadata)["signed"]["targets"]
        for name, t in targets.items():
            ids = t.get("custom", {}).get("ecuIdentifiers", {})
            if self.serial in ids:
                return name, t
        return None, None


# ---- scenarios -------------------------------------------------------------------

def metadata_verified(t):
    """§9.1 up to verify-metadata, with the scenario's expected result."""
    t.session(SESSION_PROGRAMMING)
    t.unlock()
    t.write_time()
    t.send_metadata()
    expect = t.args.expect_verify_metadata or EXPECTED_VERIFY_METADATA[t.args.scenario]
    t.routine(RID_VERIFY_METADATA, expect=expect)
    if expect in ("ok", "no-update"):
        # §4: reading TIME gives the latest securely attested time.
        attested = t.call(t.c.read_data_by_identifier_first, DID_TIME)
        t.step(f"22 F1A5 attested time {attested}")
        if attested != t.args.time:
            raise Failure(f"attested time {attested}, wrote {t.args.time}")


def scenario_flash(t):
    name, target = t.my_target()
    if target is None:
        raise Failure(f"the Director targets assign nothing to {t.serial}")
    sha = hashlib.sha256(t.image).hexdigest()
    t.note(f"target {name}: {target['length']} bytes, sha256 {target['hashes'].get('sha256')}")
    if (target["length"], target["hashes"].get("sha256")) != (len(t.image), sha):
        raise Failure("the image is not the one the Director targets name")
    frames0, t_start = tx_frames(t.args.iface), time.monotonic()
    metadata_verified(t)
    t.routine(RID_ERASE, t.erase_record(len(t.image)), expect="ok")
    blocks = t.download(ADDRESS_IMAGE, t.image)
    t.stats["image_blocks"] = blocks
    t.step(f"34/36/37 image ({len(t.image)} bytes) in {blocks} TransferData blocks → 77")
    t.routine(RID_VERIFY_IMAGE, expect="ok")
    t.routine(RID_CHECK_DEPENDENCIES, expect="ok")
    t.routine(RID_ACTIVATE, expect="ok")
    t.call(t.c.ecu_reset, RESET_HARD)
    t.step("11 01 ECUReset hardReset → 51 01")
    t.stats["seconds"] = time.monotonic() - t_start
    t.stats["frames"] = tx_frames(t.args.iface) - frames0
    t.stats["bytes"] = len(t.image)
    t.read_report(expect_installed=(name, len(t.image), sha))


def scenario_wrong_key(t):
    t.session(SESSION_PROGRAMMING)
    seed = t.request_seed()
    good = security_key(t.secret, seed)
    bad = bytes(b ^ 0x5A for b in good)
    t.step(f"27 11 → seed {seed.hex()}")
    t.expect_nrc("27 12 wrong key", 0x27, NRC_INVALID_KEY, t.c.send_key, SECURITY_LEVEL + 1, bad)
    # §2.1: a used seed is spent, whether the key was right or not.
    t.expect_nrc("27 12 right key for the spent seed", 0x27, NRC_SEQUENCE,
                 t.c.send_key, SECURITY_LEVEL + 1, good)
    # §2.1: the attempt counter survives session changes.
    t.session(SESSION_PROGRAMMING)
    seed = t.request_seed()
    t.expect_nrc("27 12 key of 15 bytes (second wrong key)", 0x27, NRC_INVALID_KEY,
                 t.c.send_key, SECURITY_LEVEL + 1, security_key(t.secret, seed)[:15])
    seed = t.request_seed()
    t.expect_nrc("27 12 third wrong key", 0x27, NRC_ATTEMPTS, t.c.send_key,
                 SECURITY_LEVEL + 1, bytes(b ^ 0xFF for b in security_key(t.secret, seed)))
    t.expect_nrc("27 11 during the 10 s delay", 0x27, NRC_DELAY, t.c.request_seed, SECURITY_LEVEL)
    loc = MemoryLocation(ADDRESS_IMAGE, len(t.image), address_format=32, memorysize_format=32)
    t.expect_nrc("34 image while locked", 0x34, NRC_DENIED, t.c.request_download, loc,
                 DataFormatIdentifier(0, 0))


def scenario_no_security(t):
    t.session(SESSION_PROGRAMMING)
    t.expect_nrc("2E F1A5 time without security access", 0x2E, NRC_DENIED,
                 t.c.write_data_by_identifier, DID_TIME, t.args.time)
    # §2: signed metadata may be written without security access.
    t.send_metadata()
    t.routine(RID_VERIFY_METADATA, expect="no-time")
    t.expect_nrc("31 01 FF00 eraseMemory", 0x31, NRC_DENIED, t.c.start_routine, RID_ERASE,
                 t.erase_record(len(t.image)))
    loc = MemoryLocation(ADDRESS_IMAGE, len(t.image), address_format=32, memorysize_format=32)
    t.expect_nrc("34 00 44 image", 0x34, NRC_DENIED, t.c.request_download, loc,
                 DataFormatIdentifier(0, 0))
    t.expect_nrc("36 01 TransferData", 0x36, NRC_DENIED, t.c.transfer_data, 1, t.image[:64])
    t.expect_nrc("37 RequestTransferExit", 0x37, NRC_DENIED, t.c.request_transfer_exit)
    t.expect_nrc("31 01 D002 activate", 0x31, NRC_DENIED, t.c.start_routine, RID_ACTIVATE)


def scenario_hash_mismatch(t):
    name, target = t.my_target()
    if target is None or target["length"] != len(t.image) \
            or target["hashes"].get("sha256") == hashlib.sha256(t.image).hexdigest():
        raise Failure("hash-mismatch needs an image of the target's length with other bytes")
    metadata_verified(t)
    t.routine(RID_ERASE, t.erase_record(len(t.image)), expect="ok")
    blocks = t.download(ADDRESS_IMAGE, t.image)
    t.step(f"34/36/37 tampered image ({len(t.image)} bytes, {blocks} blocks) → 77")
    t.routine(RID_VERIFY_IMAGE, expect="arbitrary-software")
    last = t.call(t.c.read_data_by_identifier_first, DID_LAST_RESULT)
    t.step(f"22 F1A6 last result {last[0]:02X} {RESULTS.get(last[0], '?')}")
    if last[0] != RESULT_CODES["arbitrary-software"]:
        raise Failure("LAST_RESULT does not name arbitrary-software")
    code, _ = t.routine(RID_CHECK_DEPENDENCIES)
    if RESULTS.get(code) in ("ok", "no-update"):
        raise Failure("checkProgrammingDependencies succeeded for a refused image")
    t.expect_nrc("31 01 D002 activate", 0x31, NRC_CONDITIONS, t.c.start_routine, RID_ACTIVATE)
    t.read_report(expect_attack="arbitrary-software")


def scenario_wrong_size(t):
    name, target = t.my_target()
    if target is None or target["length"] == len(t.image):
        raise Failure("wrong-size needs an image whose length differs from the target's")
    metadata_verified(t)
    t.expect_nrc(f"31 01 FF00 erase {len(t.image)} bytes (target: {target['length']})", 0x31,
                 NRC_OUT_OF_RANGE, t.c.start_routine, RID_ERASE, t.erase_record(len(t.image)))
    loc = MemoryLocation(ADDRESS_IMAGE, len(t.image), address_format=32, memorysize_format=32)
    t.expect_nrc(f"34 image of {len(t.image)} bytes", 0x34, NRC_OUT_OF_RANGE,
                 t.c.request_download, loc, DataFormatIdentifier(0, 0))
    t.expect_nrc("31 01 D002 activate", 0x31, NRC_CONDITIONS, t.c.start_routine, RID_ACTIVATE)


def scenario_not_for_me(t):
    metadata_verified(t)
    loc = MemoryLocation(ADDRESS_IMAGE, len(t.image), address_format=32, memorysize_format=32)
    t.expect_nrc("34 image without a verified target", 0x34, NRC_CONDITIONS,
                 t.c.request_download, loc, DataFormatIdentifier(0, 0))
    t.expect_nrc("31 01 D002 activate", 0x31, NRC_CONDITIONS, t.c.start_routine, RID_ACTIVATE)
    expect = t.args.expect_verify_metadata or EXPECTED_VERIFY_METADATA[t.args.scenario]
    signed = t.read_report(expect_attack=None if expect == "no-update" else expect)
    if signed.get("installed_image") is not None:
        raise Failure("the report shows an installed image")


RUN = {
    "flash": scenario_flash,
    "wrong-key": scenario_wrong_key,
    "no-security": scenario_no_security,
    "hash-mismatch": scenario_hash_mismatch,
    "wrong-size": scenario_wrong_size,
    "other-ecu": scenario_not_for_me,
    "wrong-hardware": scenario_not_for_me,
}


# ---- main ------------------------------------------------------------------------

def can_id(text):
    return int(text, 0)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--iface", help="CAN interface (vcan0)")
    p.add_argument("--tx-id", type=can_id, help="CAN id this tester sends on (the ECU's rx id)")
    p.add_argument("--rx-id", type=can_id, help="CAN id the ECU answers on")
    p.add_argument("--fd", action="store_true", help="CAN FD: MTU 72, TX_DL 64, BRS")
    p.add_argument("--secret", help="the ECU's SecurityAccess secret, hex (>= 16 bytes)")
    p.add_argument("--metadata", help="Director targets.json, as the repository signed it")
    p.add_argument("--image", help="the image file")
    p.add_argument("--time", type=int, default=int(time.time()),
                   help="Unix time written to 0xF1A5 (default: now)")
    p.add_argument("--scenario", choices=SCENARIOS, default="flash")
    p.add_argument("--metadata-via", choices=("auto", "did", "download"), default="auto",
                   help="auto: 2E when 3 + length <= max_pdu, else RequestDownload (§5.1)")
    p.add_argument("--expect-serial", help="0xF1A0 must read this")
    p.add_argument("--expect-hardware-id", help="0xF1A1 must read this")
    p.add_argument("--expect-verify-metadata", choices=sorted(RESULT_CODES),
                   help="override the scenario's expected verify-metadata result")
    p.add_argument("--p2", type=float, default=2.0,
                   help="P2client floor in s (§3: at least 1 s; default 2 for emulated CAN)")
    p.add_argument("--p2-star", type=float, default=10.0, help="P2*client floor in s (§3: 10 s)")
    p.add_argument("--report-out", help="write the signed version report here")
    p.add_argument("--identity-out", help="write the identity DIDs here (JSON)")
    p.add_argument("--stats-out", help="write timing and counts of the flash here (JSON)")
    p.add_argument("--verbose", action="store_true", help="udsoncan's own log on stderr")
    p.add_argument("--max-first-response", type=float, metavar="SECONDS",
                   help="fail when a request's first response (0x78 or the answer) "
                        "takes longer (§3: within P2server)")
    p.add_argument("--self-test", nargs="+", metavar="HEX",
                   help="SECRET SEED...: print the §2.1 key for each seed, and exit")
    args = p.parse_args(argv)
    if args.self_test:
        return args
    missing = [f"--{n.replace('_', '-')}" for n in ("iface", "tx_id", "rx_id", "secret",
                                                     "metadata", "image")
               if getattr(args, n) is None]
    if missing:
        p.error("missing " + ", ".join(missing))
    return args


def main(argv):
    args = parse_args(argv)
    if args.self_test:
        secret = bytes.fromhex(args.self_test[0])
        for seed in args.self_test[1:]:
            print(security_key(secret, bytes.fromhex(seed)).hex())
        return 0
    logging.basicConfig(level=logging.INFO if args.verbose else logging.CRITICAL,
                        format="%(name)s: %(message)s")
    secret = bytes.fromhex(args.secret)
    if len(secret) < 16:
        print("udsoncan-flash: the secret must be at least 16 bytes (§2.1)", file=sys.stderr)
        return 2
    with open(args.image, "rb") as f:
        image = f.read()
    with open(args.metadata, "rb") as f:
        metadata = f.read()

    sock = isotp.socket(timeout=0.1)
    sock.set_opts(txpad=0xCC)
    sock.set_fc_opts(bs=0, stmin=0)
    if args.fd:
        sock.set_ll_opts(mtu=isotp.socket.LinkLayerProtocol.CAN_FD, tx_dl=64, tx_flags=0x01)
    mode = isotp.AddressingMode.Normal_29bits if max(args.tx_id, args.rx_id) > 0x7FF \
        else isotp.AddressingMode.Normal_11bits
    conn = IsoTPSocketConnection(args.iface, isotp.Address(mode, txid=args.tx_id, rxid=args.rx_id),
                                 tpsock=sock)
    config = dict(udsoncan.configs.default_client_config)
    config.update({
        "data_identifiers": did_codecs(),
        "security_algo": lambda level, seed, params: security_key(secret, seed),
        # §3: the client's timers are max(floor, server value), set after
        # every DiagnosticSessionControl; P2* restarts with every 0x78.
        "use_server_timing": False,
        "p2_timeout": args.p2,
        "p2_star_timeout": args.p2_star,
        "request_timeout": None,
        "tolerate_zero_padding": False,
    })
    print(f"udsoncan-flash: udsoncan {getattr(udsoncan, '__version__', '?')}, "
          f"scenario {args.scenario}, {args.iface} {'CAN FD' if args.fd else 'classic CAN'}, "
          f"tx 0x{args.tx_id:X} rx 0x{args.rx_id:X}, image {len(image)} bytes, "
          f"metadata {len(metadata)} bytes", flush=True)
    with Client(conn, config=config) as client:
        t = Tester(client, args, secret, image, metadata)
        client.set_config("nrc78_callback", t.on_pending)
        try:
            t.read_identity()
            if args.identity_out:
                with open(args.identity_out, "w") as f:
                    json.dump(t.identity, f)
            RUN[args.scenario](t)
        except Failure as e:
            print(f"FAIL: {e}", flush=True)
            return 1
        except (NegativeResponseException, TimeoutException, udsoncan.exceptions.UnexpectedResponseException,
                udsoncan.exceptions.InvalidResponseException) as e:
            print(f"FAIL: step {t.n + 1}: {type(e).__name__}: {e}", flush=True)
            return 1
    if args.stats_out:
        with open(args.stats_out, "w") as f:
            json.dump(t.stats, f)
    slowest = t.stats.get("slowest_first_response")
    if slowest:
        print(f"udsoncan-flash: slowest first response: {slowest[0]:.2f} s ({slowest[1]})")
    print(f"udsoncan-flash: {args.scenario}: PASS in {time.monotonic() - t.t0:.2f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
