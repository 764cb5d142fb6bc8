"""Reading a box's identifier files below a root: bounded reads, text cleaning, and the parsers of
what those files hold (cpuinfo, key=value files, DRM modes, EDID, MAC addresses) and of a board
profile's source specs (`kind:argument`).

Job: give agent/deviceinfo.py safe primitives. Every path is read below the root it is given (a
fixture tree in tests, `/` on a box); reads are bounded and only regular files are opened; text is
turned into one clean line or None (junk firmware strings such as "To be filled by O.E.M." are
None). Portable: runs unmodified under MicroPython (only `os`; no typing, re or pathlib).

Must never: open a FIFO or a device (it could block or never end), read more than the limit asked
for, raise on a missing, empty, binary, huge or non-UTF-8 file, or look outside the root.
"""

import os

DIGITS = "0123456789"  # str.isdigit() also accepts digits int() refuses (superscripts)


HEX = "0123456789abcdefABCDEF"


MAX_TEXT = 128  # longer identifier text is garbage, not a model name


# Values firmware ships when nobody filled a field in (compared lower-case).
JUNK = ("", "none", "n/a", "na", "null", "unknown", "default string", "not specified",
        "not applicable", "to be filled by o.e.m.", "to be filled by oem", "system product name",
        "system version", "system manufacturer", "system serial number", "type1productconfigid",
        "o.e.m.", "oem", "0123456789", "123456789", "1234567890", "uninitialized",
        "03000200-0400-0500-0006-000700080009")


SOURCE_KINDS = ("device-tree", "cpuinfo", "dmi", "os-release", "file", "keyvalue", "machine-id", "mac",
                "kernel-release")


_S_IFMT = 0o170000


_S_IFREG = 0o100000


_S_IFDIR = 0o040000


_EACCES = 13


# ---------------------------------------------------------------- bounded file access below a root

def _join(root, path):
    if not root or root == "/":
        return path
    return root.rstrip("/") + path


def _mode(full):
    try:
        return os.stat(full)[0] & _S_IFMT
    except (OSError, ValueError):
        return None


def exists(root, path):
    return _mode(_join(root, path)) is not None


def is_dir(root, path):
    return _mode(_join(root, path)) == _S_IFDIR


def read_bytes(root, path, limit=4096, truncate=False, problems=None):
    """First bytes of a regular file, or None (missing, not a regular file, unreadable, or larger
    than `limit` unless `truncate`). Never opens FIFOs or devices, which could block or never end."""
    full = _join(root, path)
    if _mode(full) != _S_IFREG:
        return None
    chunks, total = [], 0
    try:
        f = open(full, "rb")
        try:
            # small chunks: MicroPython would allocate the whole `limit` up front for one read()
            while total <= limit:
                chunk = f.read(min(4096, limit + 1 - total))
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
        finally:
            f.close()
    except OSError as e:
        if problems is not None and e.args and e.args[0] == _EACCES:
            problems.append("%s exists but is not readable by this user" % path)
        return None
    data = b"".join(chunks)
    if len(data) > limit:
        if not truncate:
            if problems is not None:
                problems.append("%s is larger than %d bytes, ignored" % (path, limit))
            return None
        data = data[:limit]
    return data


def to_text(data):
    """Bytes to str: UTF-8 when valid, else only the printable ASCII bytes (no codec needed)."""
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except (UnicodeError, ValueError):
        return "".join(chr(b) for b in data if 32 <= b < 127 or b in (9, 10))


def read_text(root, path, limit=4096, truncate=False, problems=None):
    return to_text(read_bytes(root, path, limit, truncate, problems))


def list_dir(root, path):
    try:
        return sorted(os.listdir(_join(root, path)))
    except (OSError, ValueError):
        return []


def clean(text):
    """One line of identifier text: first non-empty line, NULs and control characters removed,
    whitespace collapsed; None when empty, junk or implausibly long."""
    if text is None:
        return None
    for line in text.replace("\x00", "\n").split("\n"):
        out = "".join(c if ord(c) >= 32 and ord(c) != 127 and c != "\ufffd" else " " for c in line)
        out = " ".join(out.split())
        if out:
            if len(out) > MAX_TEXT or is_junk(out):
                return None
            return out
    return None


def is_junk(value):
    v = value.strip().lower()
    if v in JUNK:
        return True
    # "0000000000000000", "ffffffff", "00000000-0000-...": one repeated digit is never an identifier
    v = v.replace("-", "").replace(":", "").replace(".", "").replace(" ", "")
    return len(v) > 1 and v.count(v[0]) == len(v) and v[0] in "0fx"


# ---------------------------------------------------------------- parsers of what the identifier files hold

def parse_cpuinfo(text):
    """`Key<tabs>: value` lines to a dict; the first occurrence of a key wins."""
    out = {}
    for line in (text or "").split("\n"):
        i = line.find(":")
        if i <= 0:
            continue
        key = line[:i].strip()
        if key and key not in out:
            out[key] = line[i + 1:].strip()
    return out


def _unquote(v):
    v = v.strip()
    if len(v) >= 2 and v[0] == v[-1] and v[0] in "\"'":
        v = v[1:-1]
        if '"' in v or "\\" in v:
            v = v.replace('\\"', '"').replace("\\$", "$").replace("\\`", "`").replace("\\\\", "\\")
    return v


def parse_keyvalue(text, key):
    """Value of KEY in `KEY=value` (os-release, shell properties) or `KEY:value` (RDK version.txt)."""
    for line in (text or "").split("\n"):
        line = line.strip()
        if line.startswith(key) and len(line) > len(key) and line[len(key)] in "=:":
            return _unquote(line[len(key) + 1:])
    return None


def parse_mode(text):
    """`1920x1080` or `1920x1080i` (first line of a DRM `modes` file) to (1920, 1080)."""
    line = clean(text)
    if not line or "x" not in line:
        return None
    w, h = line.split("x", 1)
    digits = ""
    for c in h:
        if c not in DIGITS:
            break
        digits += c
    if not w or len(w) > 6 or any(c not in DIGITS for c in w) or not digits or len(digits) > 6:
        return None
    w, h = int(w), int(digits)
    if not (0 < w <= 16384 and 0 < h <= 16384):
        return None
    return w, h


def parse_edid(data):
    """Physical image size in mm from a base EDID block: {"width_mm", "height_mm"} or None.

    Bytes 21/22 give the size in cm (0 = unknown or an aspect ratio); the first detailed timing
    descriptor (bytes 54-71) gives it in mm and is preferred when it agrees with the cm size.
    """
    if data is None or len(data) < 128:
        return None
    block = data[:128]
    if block[:8] != b"\x00\xff\xff\xff\xff\xff\xff\x00" or sum(block) % 256 != 0:
        return None
    w_cm, h_cm = block[21], block[22]
    if not w_cm or not h_cm:
        return None
    w, h = w_cm * 10, h_cm * 10
    dtd = block[54:72]
    if dtd[0] or dtd[1]:  # a pixel clock: this is a timing descriptor, not a text descriptor
        dw = dtd[12] | ((dtd[14] >> 4) << 8)
        dh = dtd[13] | ((dtd[14] & 0x0F) << 8)
        if dw > 0 and dh > 0 and abs(dw - w) <= 10 and abs(dh - h) <= 10:
            w, h = dw, dh
    return {"width_mm": w, "height_mm": h}


def parse_mac(text):
    """`aa:bb:cc:dd:ee:ff` lower-case, or None for anything that is not a usable burned-in address
    (zero, broadcast, multicast, or locally administered: random per boot on many boxes)."""
    v = clean(text)
    if not v:
        return None
    parts = v.lower().split(":")
    if len(parts) != 6:
        return None
    for p in parts:
        if len(p) != 2 or not all(c in "0123456789abcdef" for c in p):
            return None
    first = int(parts[0], 16)
    if first & 0x01 or first & 0x02 or parts == ["00"] * 6:
        return None
    return ":".join(parts)


def parse_source(spec):
    """`kind` or `kind:argument` to (kind, argument); ValueError naming what is wrong."""
    if not isinstance(spec, str) or not spec:
        raise ValueError("a source must be a non-empty string such as \"device-tree:model\"")
    i = spec.find(":")
    kind, arg = (spec, "") if i < 0 else (spec[:i], spec[i + 1:])
    if kind not in SOURCE_KINDS:
        raise ValueError("unknown source kind %r in %r; expected one of %s" % (kind, spec, ", ".join(SOURCE_KINDS)))
    if kind in ("machine-id", "kernel-release") and arg:
        raise ValueError("source %r takes no argument" % kind)
    if kind in ("device-tree", "cpuinfo", "dmi", "os-release") and not arg:
        raise ValueError("source %r needs an argument, e.g. %s:model" % (spec, kind))
    if kind in ("device-tree", "dmi") and ("/" in arg or ".." in arg):
        raise ValueError("source %r: the property name must not contain '/' or '..'" % spec)
    if kind == "file" and not arg.startswith("/"):
        raise ValueError("source %r: expected an absolute path, e.g. file:/etc/serial" % spec)
    if kind == "keyvalue":
        j = arg.rfind(":")
        if not arg.startswith("/") or j <= 1 or j == len(arg) - 1:
            raise ValueError("source %r: expected keyvalue:/absolute/path:KEY" % spec)
    if kind == "mac" and "/" in arg:
        raise ValueError("source %r: expected mac or mac:<interface name>" % spec)
    return kind, arg
