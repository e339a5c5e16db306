#!/usr/bin/env python3
"""Pick executables out of cargo's JSON messages.

    select-artifacts.py CARGO_JSON "SPEC ..." KIND

SPEC is PACKAGE (every artifact of that kind in the package) or PACKAGE:TARGET
(one target). KIND is `test` (test executables: unit tests of lib/bins and
tests/*.rs), `example` or `bin`. Prints one path per line, in spec order; exits
1 when a spec matches nothing, so a renamed test cannot silently drop out.
"""
import json
import sys


def package_name(package_id):
    # "path+file:///w/can#secureev-can@0.1.0" (cargo >= 1.77) or
    # "secureev-can 0.1.0 (path+file:///w/can)" (older).
    if "#" in package_id:
        tail = package_id.rsplit("#", 1)[1]
        return tail.split("@", 1)[0] if "@" in tail else None
    return package_id.split(" ", 1)[0]


def main():
    path, spec, kind = sys.argv[1], sys.argv[2].split(), sys.argv[3]
    artifacts = []
    with open(path) as f:
        for line in f:
            try:
                m = json.loads(line)
            except ValueError:
                continue
            if m.get("reason") != "compiler-artifact" or not m.get("executable"):
                continue
            is_test = m["profile"]["test"]
            kinds = m["target"]["kind"]
            if kind == "test" and not is_test:
                continue
            if kind == "example" and (is_test or "example" not in kinds):
                continue
            if kind == "bin" and (is_test or "bin" not in kinds):
                continue
            artifacts.append((package_name(m["package_id"]), m["target"]["name"], m["executable"]))
    seen = set()
    missing = []
    for item in spec:
        pkg, _, target = item.partition(":")
        hits = [a for a in artifacts if a[0] == pkg and (not target or a[1] == target)]
        if not hits:
            missing.append(item)
        for _, _, exe in hits:
            if exe not in seen:
                seen.add(exe)
                print(exe)
    if missing:
        print(f"select-artifacts: no {kind} artifact for: {' '.join(missing)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
