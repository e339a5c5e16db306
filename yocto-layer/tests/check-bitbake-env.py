#!/usr/bin/env python3
"""Packaging tests of meta-secureev over `bitbake -e` output.

Called by release-check.sh after a real bitbake parsed the layer: it takes the
environment dumps of the layer's recipes (`bitbake -e <recipe>`, variables and
functions as bitbake expanded them) and checks the packaging, without
compiling anything:

* the expanded do_install of secureev-ota (cargo's own install step stubbed:
  there are no binaries without a Rust build) runs into a scratch image, with
  ${S} pointed at this repository and ${UNPACKDIR} at the recipe's files/;
  then the installed tree must have SECUREEV_UI_GROUP in the D-Bus policy,
  sysusers.d and the tmpfiles.d line of the inhibit directory; the vcan rig
  must ship the ECU agent's configuration (valid TOML with the keys the agent
  requires) and its first-boot provisioning unit; every installed file must
  fall into a package (FILES, first match wins as in do_package) and every
  SYSTEMD_SERVICE must be installed in its package;
* REQUIRED_DISTRO_FEATURES has systemd, EXCLUDE_FROM_WORLD is set while the
  source revision is the placeholder (and for the configuration recipe while
  no roots are provided);
* the expanded do_update_crates task with its prefuncs, run with the host's
  python3 over a copy of the workspace's Cargo.lock and fuzz/Cargo.lock,
  writes exactly the checked-in secureev-ota-crates.inc;
* linux-yocto gets secureev-can.cfg with the feature on.

Output: one line per check, "ok      <what>" or "FAILED  <what>", details
indented. Exit status 1 if any check failed.
"""

import argparse
import fnmatch
import os
import re
import shutil
import subprocess
import sys

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    tomllib = None

FAILED = 0


def result(ok, what, detail=None):
    global FAILED
    print(("ok      " if ok else "FAILED  ") + what)
    if detail and not ok:
        for line in str(detail).splitlines()[:20]:
            print("    " + line)
    if not ok:
        FAILED += 1
    return ok


class Env:
    """Variables and shell functions of one `bitbake -e` dump."""

    def __init__(self, path):
        with open(path, encoding="utf-8", errors="replace") as f:
            self.lines = f.read().splitlines()
        self.vars = {}
        self.funcs = {}
        i = 0
        var_re = re.compile(r'^(?:export )?([A-Za-z0-9_:+\-\.\{\}\$/@]+)="(.*)$')
        func_re = re.compile(r'^([A-Za-z0-9_\-]+)\(\) \{$')
        while i < len(self.lines):
            line = self.lines[i]
            m = func_re.match(line)
            if m:
                body = []
                i += 1
                while i < len(self.lines) and self.lines[i] != "}":
                    body.append(self.lines[i])
                    i += 1
                self.funcs[m.group(1)] = "\n".join(body)
                i += 1
                continue
            m = var_re.match(line)
            if m:
                name, rest = m.group(1), m.group(2)
                parts = [rest]
                while parts[-1].endswith(" \\") and i + 1 < len(self.lines):
                    parts[-1] = parts[-1][:-2]
                    i += 1
                    parts.append(self.lines[i])
                value = "\n".join(parts)
                if value.endswith('"'):
                    value = value[:-1]
                self.vars[name] = value.replace('\\"', '"').replace("\\$", "$")
            i += 1

    def get(self, name, default=""):
        return self.vars.get(name, default)


def run_install(env, repo, files_dir, image, label):
    """Run the expanded do_install of `env` into `image`."""
    d = env.get("D")
    s = env.get("S")
    unpack = env.get("UNPACKDIR")
    workdir = env.get("WORKDIR")
    body = env.funcs.get("do_install")
    if not (d and s and unpack and body):
        result(False, f"{label}: bitbake -e shows D, S, UNPACKDIR and do_install",
               f"D={d!r} S={s!r} UNPACKDIR={unpack!r} do_install={'yes' if body else 'no'}")
        return False
    script = body
    # Longest first: S and D live below WORKDIR / UNPACKDIR.
    for old, new in sorted([(d, image), (s, repo), (unpack, files_dir)], key=lambda p: -len(p[0])):
        script = script.replace(old, new)
    if workdir:
        script = script.replace(workdir, os.path.dirname(image))
    prelude = (
        "set -e\n"
        "cargo_do_install() { :; }\n"  # needs the compiled binaries
        "bbnote() { :; }\nbbwarn() { echo \"WARNING: $*\" >&2; }\n"
        "bbfatal() { echo \"FATAL: $*\" >&2; exit 1; }\n"
        "bbfatal_log() { bbfatal \"$@\"; }\n"
    )
    # Other functions the body calls (e.g. helpers of the classes).
    for name, fbody in env.funcs.items():
        if name != "do_install" and re.search(r"(^|\s)%s(\s|$)" % re.escape(name), script) \
                and name != "cargo_do_install":
            prelude += f"{name}() {{\n{fbody}\n}}\n"
    shutil.rmtree(image, ignore_errors=True)
    os.makedirs(image)
    proc = subprocess.run(["bash", "-c", prelude + script], capture_output=True, text=True)
    return result(proc.returncode == 0, f"{label}: expanded do_install runs into a scratch image",
                  proc.stdout + proc.stderr)


def installed_files(image):
    out = []
    for root, dirs, files in os.walk(image):
        for name in files + [x for x in dirs if os.path.islink(os.path.join(root, x))]:
            out.append("/" + os.path.relpath(os.path.join(root, name), image))
    return sorted(out)


def package_of(path, env, packages):
    """First package whose FILES matches, as do_package's populate_packages."""
    for pkg in packages:
        for pattern in env.get("FILES:" + pkg).split():
            if fnmatch.fnmatch(path, pattern) or path.startswith(pattern.rstrip("/") + "/"):
                return pkg
    return None


def check_ota(env, args, label):
    image = os.path.join(args.scratch, "image-" + label)
    files_dir = os.path.join(args.layer, "recipes-ota", "secureev-ota", "files")
    if not run_install(env, args.repo, files_dir, image, label):
        return
    group = args.ui_group
    sysconf = env.get("sysconfdir", "/etc")
    libdir = env.get("nonarch_libdir", "/usr/lib")
    datadir = env.get("datadir", "/usr/share")
    unitdir = env.get("systemd_system_unitdir", "/usr/lib/systemd/system")

    def read(rel):
        p = os.path.join(image, rel.lstrip("/"))
        return open(p, encoding="utf-8").read() if os.path.exists(p) else ""

    # SECUREEV_UI_GROUP everywhere the UI group appears.
    policy = read(f"{datadir}/dbus-1/system.d/io.secureev.Ota1.conf")
    result(f'group="{group}"' in policy and 'group="secureev-ui"' not in policy,
           f"{label}: D-Bus policy names SECUREEV_UI_GROUP ({group})")
    sysusers = read(f"{libdir}/sysusers.d/secureev-ota.conf")
    result(re.search(rf"^g\s+{re.escape(group)}\b", sysusers, re.M) is not None
           and not re.search(r"^g\s+secureev-ui\b", sysusers, re.M),
           f"{label}: sysusers.d creates group {group}")
    tmpfiles = read(f"{libdir}/tmpfiles.d/secureev-ota.conf")
    inhibit = [l for l in tmpfiles.splitlines() if "/run/secureev-inhibit" in l and not l.startswith("#")]
    result(len(inhibit) == 1 and inhibit[0].split()[4] == group,
           f"{label}: tmpfiles.d gives /run/secureev-inhibit to group {group} (SECUREEV_UI_GROUP)",
           "\n".join(inhibit) or "no /run/secureev-inhibit line")
    result(group in env.get("GROUPADD_PARAM:secureev-ota-daemon").split(),
           f"{label}: GROUPADD_PARAM creates {group}", env.get("GROUPADD_PARAM:secureev-ota-daemon"))

    # The vcan rig enables the agent on vcan0: it must ship what the agent needs.
    wants = f"{sysconf}/systemd/system/multi-user.target.wants/secureev-ecu@vcan0.service"
    ecu_conf = f"{sysconf}/secureev-ecu/vcan0.toml"
    unit = read(f"{unitdir}/secureev-ecu@.service")
    m = re.search(r"--config (\S+)", unit)
    result(m is not None and m.group(1).replace("%E", sysconf).replace("%i", "vcan0") == ecu_conf,
           f"{label}: secureev-ecu@.service reads {ecu_conf}", m.group(1) if m else unit[:200])
    installed = installed_files(image)
    packages = env.get("PACKAGES").split()
    rig = "secureev-ota-vcan-rig-config"
    result(os.path.islink(os.path.join(image, wants.lstrip("/"))) and package_of(wants, env, packages) == rig,
           f"{label}: {rig} enables secureev-ecu@vcan0.service")
    conf_text = read(ecu_conf)
    ok, detail = bool(conf_text), "not installed"
    if conf_text and tomllib:
        try:
            conf = tomllib.loads(conf_text)
            missing = [k for k in ("serial", "hardware_id", "director_root") if not conf.get(k)]
            ok = not missing and conf["serial"] == args.rig_serial \
                and "@SERIAL@" not in conf_text and "@HWID@" not in conf_text
            detail = f"missing {missing}" if missing else conf_text
        except tomllib.TOMLDecodeError as e:
            ok, detail = False, e
    result(ok and package_of(ecu_conf, env, packages) == rig,
           f"{label}: {rig} ships {ecu_conf} (serial, hardware_id, director_root; SECUREEV_RIG_ECU_SERIAL)", detail)
    result(ecu_conf in env.get("CONFFILES:" + rig).split(), f"{label}: {ecu_conf} is a CONFFILE of {rig}")
    setup = read(f"{env.get('libexecdir', '/usr/libexec')}/secureev-vcan-rig-setup")
    result(f'SERIAL="{args.rig_serial}"' in setup and "security-secret" in setup and "director-root.json" in setup,
           f"{label}: the rig's first-boot setup provisions the secret and the Director root the config names")

    # Every installed file is in a package (else QA installed-vs-shipped).
    unpackaged = [p for p in installed if package_of(p, env, packages) is None]
    result(not unpackaged, f"{label}: every installed file is in a package ({len(installed)} files)",
           "\n".join(unpackaged))
    # Every SYSTEMD_SERVICE is installed and in its package (systemd.bbclass
    # stops the build otherwise).
    bad = []
    for pkg in env.get("SYSTEMD_PACKAGES").split():
        for svc in env.get("SYSTEMD_SERVICE:" + pkg).split():
            path = f"{unitdir}/{svc}"
            if path not in installed:
                bad.append(f"{pkg}: {svc} not installed")
            elif package_of(path, env, packages) != pkg:
                bad.append(f"{pkg}: {svc} is in {package_of(path, env, packages)}")
    result(not bad, f"{label}: every SYSTEMD_SERVICE is installed in its package", "\n".join(bad))

    if args.rauc:
        check_rauc(env, label, read, packages, unitdir, datadir)

    result("systemd" in env.get("REQUIRED_DISTRO_FEATURES").split(),
           f"{label}: REQUIRED_DISTRO_FEATURES has systemd")
    placeholder = env.get("SRCREV") == "0" * 40
    result(env.get("EXCLUDE_FROM_WORLD") == ("1" if placeholder else "0"),
           f"{label}: EXCLUDE_FROM_WORLD is 1 exactly while SRCREV is the placeholder",
           f"SRCREV={env.get('SRCREV')} EXCLUDE_FROM_WORLD={env.get('EXCLUDE_FROM_WORLD')}")


def check_rauc(env, label, read, packages, unitdir, datadir):
    """PACKAGECONFIG rauc: the D-Bus policy for RAUC, the boot confirmation."""
    pkg = "secureev-ota-rauc"
    policy_path = f"{datadir}/dbus-1/system.d/secureev-rauc.conf"
    policy = read(policy_path)
    result('<policy user="secureev">' in policy and 'send_destination="de.pengutronix.rauc"' in policy
           and package_of(policy_path, env, packages) == pkg,
           f"{label}: {pkg} lets user secureev call de.pengutronix.rauc (D-Bus policy)")
    unit_path = f"{unitdir}/secureev-boot-confirm.service"
    unit = read(unit_path)
    result("After=boot-complete.target" in unit and "Requires=boot-complete.target" in unit
           and "ExecStart=/usr/bin/secureev-otad --confirm-boot" in unit
           and "Before=secureev-otad.service" in unit
           and package_of(unit_path, env, packages) == pkg,
           f"{label}: secureev-boot-confirm.service runs --confirm-boot after boot-complete.target (the health checks)")
    result(pkg in env.get("SYSTEMD_PACKAGES").split()
           and "secureev-boot-confirm.service" in env.get("SYSTEMD_SERVICE:" + pkg).split()
           and env.get("SYSTEMD_AUTO_ENABLE:" + pkg) == "enable",
           f"{label}: {pkg} enables secureev-boot-confirm.service")
    dropin = f"{unitdir}/secureev-otad.service.d/50-secureev-rauc.conf"
    result("ProcSubset=all" in read(dropin) and package_of(dropin, env, packages) == pkg,
           f"{label}: {pkg} lets the daemon read the boot ID (ProcSubset=all drop-in)")
    rdeps = env.get("RDEPENDS:" + pkg).split()
    result("rauc" in rdeps and "rauc-service" in rdeps
           and "rauc-mark-good" in env.get("RCONFLICTS:" + pkg).split()
           and pkg in env.get("RDEPENDS:secureev-ota").split(),
           f"{label}: {pkg} needs rauc and rauc-service, conflicts with rauc-mark-good; secureev-ota pulls it in",
           f"RDEPENDS={rdeps} RCONFLICTS={env.get('RCONFLICTS:' + pkg)}")


def check_update_crates(env, args):
    body = env.funcs.get("do_update_crates")
    prefunc = env.funcs.get("secureev_update_crates_lock")
    if not result(bool(body) and bool(prefunc),
                  "secureev-ota: bitbake -e shows do_update_crates and its prefunc secureev_update_crates_lock"):
        return
    result("secureev_update_crates_lock" in env.get("do_update_crates[prefuncs]", "secureev_update_crates_lock"),
           "secureev-ota: the prefunc is attached to do_update_crates")
    s = env.get("S")
    workdir = env.get("WORKDIR")
    target_dir = env.get("THISDIR")
    scratch = os.path.join(args.scratch, "update-crates")
    shutil.rmtree(scratch, ignore_errors=True)
    src = os.path.join(scratch, "src")
    out_dir = os.path.join(scratch, "out")
    os.makedirs(os.path.join(src, "fuzz"))
    os.makedirs(out_dir)
    shutil.copy(os.path.join(args.repo, "Cargo.lock"), src)
    shutil.copy(os.path.join(args.repo, "fuzz", "Cargo.lock"), os.path.join(src, "fuzz"))
    script = "set -e\nbbnote() { :; }\n" + "secureev_update_crates_lock() {\n" + prefunc + "\n}\n" \
        + "secureev_update_crates_lock\n" + body + "\n"
    for old, new in sorted([(s, src), (workdir, os.path.join(scratch, "work")), (target_dir, out_dir)],
                           key=lambda p: -len(p[0])):
        script = script.replace(old, new)
    script = script.replace("nativepython3", sys.executable)
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True)
    if not result(proc.returncode == 0, "secureev-ota: the expanded do_update_crates runs",
                  proc.stdout + proc.stderr):
        return
    produced = os.path.join(out_dir, "secureev-ota-crates.inc")
    committed = os.path.join(args.layer, "recipes-ota", "secureev-ota", "secureev-ota-crates.inc")
    same = os.path.exists(produced) and open(produced).read() == open(committed).read()
    detail = ""
    if not same and os.path.exists(produced):
        detail = subprocess.run(["diff", "-u", committed, produced], capture_output=True, text=True).stdout
    result(same, "secureev-ota: do_update_crates writes exactly the checked-in secureev-ota-crates.inc "
           "(fuzz/Cargo.lock ignored)", detail)

    # The comparison can fail: OE-core's default CARGO_LOCK_SRC_DIR (${S})
    # reads fuzz/Cargo.lock too and writes another file.
    lock_dir = env.get("CARGO_LOCK_SRC_DIR")
    default_body = body.replace(lock_dir, s)
    script = "set -e\nbbnote() { :; }\n" + default_body + "\n"
    for old, new in sorted([(s, src), (workdir, os.path.join(scratch, "work")), (target_dir, out_dir)],
                           key=lambda p: -len(p[0])):
        script = script.replace(old, new)
    script = script.replace("nativepython3", sys.executable)
    if os.path.exists(produced):
        os.remove(produced)
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True)
    differs = proc.returncode == 0 and os.path.exists(produced) and open(produced).read() != open(committed).read()
    result(differs, "secureev-ota: with OE-core's default CARGO_LOCK_SRC_DIR (${S}) the task writes another "
           "include (fuzz/Cargo.lock): the comparison above can fail", proc.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", required=True)
    ap.add_argument("--layer", required=True)
    ap.add_argument("--scratch", required=True)
    ap.add_argument("--ui-group", required=True)
    ap.add_argument("--rig-serial", required=True)
    ap.add_argument("--ota", required=True)
    ap.add_argument("--ota-git", required=True)
    ap.add_argument("--conf", required=True)
    ap.add_argument("--tools", required=True)
    ap.add_argument("--kernel", required=True)
    ap.add_argument("--packagegroup")
    ap.add_argument("--rauc", action="store_true", help="PACKAGECONFIG rauc is on (meta-rauc present)")
    args = ap.parse_args()

    ota = Env(args.ota)
    result(ota.get("PV") == "0.1.0", "secureev-ota: the preferred version is the release-pinned recipe",
           f"PV={ota.get('PV')}")
    check_ota(ota, args, "secureev-ota")
    check_update_crates(ota, args)
    ota_git = Env(args.ota_git)
    result(ota_git.get("PV").startswith("0.1.0+git") and ota_git.get("DEFAULT_PREFERENCE") == "-1",
           "secureev-ota_git: PV 0.1.0+git, DEFAULT_PREFERENCE -1",
           f"PV={ota_git.get('PV')} DEFAULT_PREFERENCE={ota_git.get('DEFAULT_PREFERENCE')}")
    check_ota(ota_git, args, "secureev-ota_git")

    conf = Env(args.conf)
    result(conf.get("UNPACKDIR").endswith("/sources") and conf.get("S") == conf.get("UNPACKDIR"),
           "secureev-ota-conf: S is OE-core's UNPACKDIR (${WORKDIR}/sources)",
           f"S={conf.get('S')} UNPACKDIR={conf.get('UNPACKDIR')}")
    result(conf.get("EXCLUDE_FROM_WORLD") == "1",
           "secureev-ota-conf: excluded from world while no trusted roots are provided")

    tools = Env(args.tools)
    result("-p secureev-server" in tools.get("CARGO_BUILD_FLAGS") and "native" in tools.get("CLASSOVERRIDE"),
           "secureev-ota-tools-native: a native build of secureev-server",
           f"CARGO_BUILD_FLAGS={tools.get('CARGO_BUILD_FLAGS')}")

    kernel = Env(args.kernel)
    result("file://secureev-can.cfg" in kernel.get("SRC_URI").split(),
           "linux-yocto: SRC_URI has secureev-can.cfg with DISTRO_FEATURES secureev")
    extra = kernel.get("FILESEXTRAPATHS").split(":")
    result(bool(extra) and extra[0].endswith("meta-secureev/recipes-kernel/linux/files"),
           "linux-yocto: FILESEXTRAPATHS starts with the layer's files/ with DISTRO_FEATURES secureev",
           kernel.get("FILESEXTRAPATHS"))

    if args.packagegroup:
        pg = Env(args.packagegroup)
        result(pg.get("EXCLUDE_FROM_WORLD") == "1" and "systemd" in pg.get("REQUIRED_DISTRO_FEATURES").split(),
               "packagegroup-secureev-vcan-rig: excluded from world, requires systemd")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
