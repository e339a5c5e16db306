#!/usr/bin/python3
"""D-Bus probe for the io.secureev.Ota1 policy test (systemd/tests/run.sh).

Runs as whatever uid run.sh switched to and reports one outcome through its
exit status, so the shell can assert allow/deny without parsing messages:

  0  allowed (the call returned, or the name was acquired)
  3  denied by the bus policy (org.freedesktop.DBus.Error.AccessDenied, or
     RequestName refused)
  1  anything else (bus unreachable, unexpected error) -- always a test failure

Subcommands (ADDRESS is a D-Bus address such as unix:path=/tmp/x/socket):

  serve ADDRESS
      Export a stand-in of the daemon's object, /io/secureev/Ota1 with
      interface io.secureev.Ota1 (method Ping() -> s, property Version s), and
      only then request the name (objects before the name, as the daemon does).
      Prints "owned" or "denied" on stdout, then serves until SIGTERM.
  own ADDRESS
      Try to own io.secureev.Ota1 and report; release on exit.
  call ADDRESS [INTERFACE MEMBER]
      Call a method on io.secureev.Ota1 at /io/secureev/Ota1; default
      io.secureev.Ota1.Ping.
  get ADDRESS     Properties.Get(io.secureev.Ota1, Version)
  getall ADDRESS  Properties.GetAll(io.secureev.Ota1)
  introspect ADDRESS
  listen ADDRESS
      Subscribe to every signal of io.secureev.Ota1, print "ready", and exit
      0 if one arrives within 3 s, 3 if none does (the bus policy kept it
      away); the test then calls Emit on the stand-in (as root).

Uses PyGObject (Debian: python3-gi), which run.sh installs if missing.
"""

import signal
import sys

from gi.repository import Gio, GLib

NAME = "io.secureev.Ota1"
PATH = "/io/secureev/Ota1"
IFACE = "io.secureev.Ota1"
VERSION = "0.0.0-policy-test"

XML = f"""
<node>
  <interface name="{IFACE}">
    <method name="Ping"><arg type="s" name="reply" direction="out"/></method>
    <method name="Emit"/>
    <signal name="Completed"><arg type="u" name="code"/><arg type="s" name="message"/></signal>
    <property name="Version" type="s" access="read"/>
  </interface>
</node>
"""

ALLOWED, DENIED, BROKEN = 0, 3, 1
ACCESS_DENIED = "org.freedesktop.DBus.Error.AccessDenied"


def connect(address):
    flags = (
        Gio.DBusConnectionFlags.AUTHENTICATION_CLIENT
        | Gio.DBusConnectionFlags.MESSAGE_BUS_CONNECTION
    )
    return Gio.DBusConnection.new_for_address_sync(address, flags, None, None)


def request_name(conn):
    """Return True if we became the primary owner, False if the bus refused."""
    try:
        reply = conn.call_sync(
            "org.freedesktop.DBus", "/org/freedesktop/DBus",
            "org.freedesktop.DBus", "RequestName",
            GLib.Variant("(su)", (NAME, 4)),  # 4 = DBUS_NAME_FLAG_DO_NOT_QUEUE
            GLib.VariantType("(u)"), Gio.DBusCallFlags.NONE, 5000, None)
    except GLib.Error as e:
        if Gio.DBusError.get_remote_error(e) == ACCESS_DENIED:
            print(f"RequestName denied: {e.message}", file=sys.stderr)
            return False
        raise
    (result,) = reply.unpack()
    # 1 = PRIMARY_OWNER, 4 = ALREADY_OWNER; 3 = EXISTS (someone else owns it)
    if result in (1, 4):
        return True
    print(f"RequestName returned {result}", file=sys.stderr)
    return False


def on_method(conn, sender, path, iface, method, params, invocation):
    if iface == IFACE and method == "Ping":
        invocation.return_value(GLib.Variant("(s)", ("pong",)))
    elif iface == IFACE and method == "Emit":
        # A broadcast, as the daemon's PropertiesChanged/Completed are.
        conn.emit_signal(None, PATH, IFACE, "Completed",
                         GLib.Variant("(us)", (0, "probe-signal")))
        invocation.return_value(None)
    else:
        invocation.return_dbus_error(
            "org.freedesktop.DBus.Error.UnknownMethod", method)


def on_get(conn, sender, path, iface, prop):
    return GLib.Variant("s", VERSION) if prop == "Version" else None


def serve(address):
    conn = connect(address)
    node = Gio.DBusNodeInfo.new_for_xml(XML)
    conn.register_object(PATH, node.interfaces[0], on_method, on_get, None)
    owned = request_name(conn)
    print("owned" if owned else "denied", flush=True)
    if not owned:
        return DENIED
    loop = GLib.MainLoop()
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, loop.quit)
    # Never outlive the test bus, even if run.sh dies without killing us.
    conn.connect("closed", lambda *_: loop.quit())
    loop.run()
    return ALLOWED


def own(address):
    return ALLOWED if request_name(connect(address)) else DENIED


def call(address, iface, member, params=None, reply_type=None):
    conn = connect(address)
    try:
        reply = conn.call_sync(NAME, PATH, iface, member, params,
                               reply_type, Gio.DBusCallFlags.NONE, 5000, None)
    except GLib.Error as e:
        if Gio.DBusError.get_remote_error(e) == ACCESS_DENIED:
            print(f"{iface}.{member} denied: {e.message}", file=sys.stderr)
            return DENIED
        print(f"{iface}.{member} failed: {e.message}", file=sys.stderr)
        return BROKEN
    print(reply.print_(True) if reply is not None else "()")
    return ALLOWED


def listen(address, seconds=3.0):
    """Subscribe to every signal of NAME, print "ready", and report whether
    one arrived within `seconds` (0) or not (3)."""
    conn = connect(address)
    got = []
    loop = GLib.MainLoop()

    def on_signal(*args):
        got.append(args)
        loop.quit()

    conn.signal_subscribe(NAME, None, None, None, None,
                          Gio.DBusSignalFlags.NONE, on_signal)
    # A round trip to the bus: the match rule is in place before "ready".
    conn.call_sync("org.freedesktop.DBus", "/org/freedesktop/DBus",
                   "org.freedesktop.DBus", "GetId", None, None,
                   Gio.DBusCallFlags.NONE, 5000, None)
    print("ready", flush=True)
    GLib.timeout_add(int(seconds * 1000), loop.quit)
    loop.run()
    if got:
        print("received", flush=True)
        return ALLOWED
    print("nothing received", flush=True)
    return DENIED


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return BROKEN
    cmd, address = argv[1], argv[2]
    props = "org.freedesktop.DBus.Properties"
    if cmd == "serve":
        return serve(address)
    if cmd == "own":
        return own(address)
    if cmd == "call":
        iface, member = (argv[3], argv[4]) if len(argv) == 5 else (IFACE, "Ping")
        return call(address, iface, member)
    if cmd == "get":
        return call(address, props, "Get",
                    GLib.Variant("(ss)", (IFACE, "Version")))
    if cmd == "getall":
        return call(address, props, "GetAll", GLib.Variant("(s)", (IFACE,)))
    if cmd == "listen":
        return listen(address)
    if cmd == "introspect":
        return call(address, "org.freedesktop.DBus.Introspectable", "Introspect")
    print(f"unknown command {cmd!r}", file=sys.stderr)
    return BROKEN


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except GLib.Error as e:
        print(f"D-Bus failure: {e.message}", file=sys.stderr)
        sys.exit(BROKEN)
