#!/usr/bin/env python3
"""Write the seed corpora of the fuzz targets into fuzz/corpus/<target>/.

The seeds are committed; run this only to regenerate them:
    python3 fuzz/make_seeds.py [fuzz/corpus]
Each seed is small and names what it exercises.
"""
import base64
import os
import struct
import sys


def crc32c(data):
    c = 0xFFFFFFFF
    for b in data:
        c ^= b
        for _ in range(8):
            c = (c >> 1) ^ (0x82F63B78 & -(c & 1))
    return c ^ 0xFFFFFFFF


def record(token, value, version=1, hsize=40, flags=0, reserved=0,
           vlen=None, magic=b"KVR1"):
    """A record file as the fs backend writes it (see the top of fs.c)."""
    if vlen is None:
        vlen = len(value)
    h = magic + struct.pack("<HHQQI", version, hsize, token, vlen,
                            crc32c(value))
    h += struct.pack("<II", flags, reserved)
    h += struct.pack("<I", crc32c(h))
    return h + value


KEYS = {
    "simple": b"/a",
    "fields": b"/users:alice/posts/p:1",
    "slashes": b"///a///b///",
    "spaces": b" / a / b:c / ",
    "two-colons": b"/a:b:c",
    "empty-field": b"/:v",
    "empty-value": b"/f:",
    "colon-only": b"/:",
    "dots": b"/../../etc/passwd",
    "control": b"/a\x01b/\x7f/\x1f",
    "high-bytes": b"/\xc3\xa9/\xff\xfe",
    "pair": b"/a/b\x00/a",
    "pair-prefix": b"/a\x00/ab",
    "pair-order": b"/a-b\x00/a/b",
    "deep": b"/" + b"/".join(b"%d" % i for i in range(40)),
    "long": b"/" + b"x" * 600,
    "root": b"/",
    "encoded": b"a\x00b:c\x00",
    "encoded-bad": b"a\x00\x00",
    "whitespace-id": b"\t\n\v\f\r ",
    "empty-values": b"a:b/c:\x00/a:/ : /c",
    "root-path": b"/a:b\x00/x",
    "encoded-empty-value": b"a:\x00b\x00c:\x00",
    "encoded-colon": b"a\x00:\x00",
}

NAMES = [b"abc", b"a%3Ab", b"%2E%2E", b"%25", b"f%3Av", b"%00", b"%2F",
         b"%41", b"%e9", b"%C3%A9", b"a-b_c", b"%20x%20", b"c%3A", b"",
         b"%3A", b"%20"]

LINES = {
    "dump": b'{"key": "/a", "value": "aGVsbG8=", "token": 5}\n',
    "key-base64": b'{"key_base64": "L2E=", "value": "", "token": null}\n',
    "escapes": b'{"key": "/\\u00e9\\t\\"q\\"/\\ud83d\\ude00", '
               b'"value": "AAEC", "token": 18446744073709551615}\n',
    "extra-members": b'{"x": [1, {"y": null}, true, false, -1.5e3], '
                    b'"key": "/k", "value": "Zm9v"}',
    "order": b'  {"value":"YQ==","token":1,"key":"/z"}  \n',
    "nested": b'{"key": "/n", "value": "", "deep": [[[[[[[[[[1]]]]]]]]]]}\n',
    "bad-base64": b'{"key": "/a", "value": "a=b="}\n',
    "twice": b'{"key": "/a", "key": "/b", "value": ""}\n',
    "nul-key": b'{"key": "/a\\u0000b", "value": ""}\n',
    "lone-surrogate": b'{"key": "/\\udc00", "value": ""}\n',
    "negative-token": b'{"key": "/a", "value": "", "token": -1}\n',
    "truncated": b'{"key": "/a", "value": "aGVs',
    "blank": b'   \t\r\n',
    "not-utf8": b'{"key": "/\xff", "value": ""}\n',
}


def main():
    top = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "corpus")
    seeds = {"key": {}, "record": {}, "kvctl_load": {}}
    seeds["key"] = dict(KEYS)
    rec = seeds["record"]
    good = record(1, b"hello")
    rec["ok"] = b"\x00" + good
    rec["ok-empty"] = b"\x00" + record(7, b"")
    rec["ok-max-token"] = b"\x00" + record(2**64 - 1, bytes(range(256)))
    rec["short"] = b"\x00" + good[:39]
    rec["token-0"] = b"\x01" + record(0, b"x")
    rec["long-claim"] = b"\x01" + record(3, b"abc", vlen=2**40)
    rec["longer-file"] = b"\x01" + record(3, b"abc") + b"!"
    rec["version-2"] = b"\x01" + record(3, b"abc", version=2)
    rec["flags"] = b"\x01" + record(3, b"abc", flags=1)
    rec["reserved"] = b"\x01" + record(3, b"abc", reserved=1)
    rec["bad-magic"] = b"\x01" + record(3, b"abc", magic=b"KVR2")
    rec["value-flip"] = b"\x00" + good[:-1] + b"X"
    for i, n in enumerate(NAMES):
        rec["name-%02d" % i] = b"\x02" + n
    seeds["kvctl_load"] = dict(LINES)
    for target, files in seeds.items():
        d = os.path.join(top, target)
        os.makedirs(d, exist_ok=True)
        for name, data in files.items():
            with open(os.path.join(d, name), "wb") as f:
                f.write(data)
    # sanity: the base64 seeds are what kvctl dump writes
    assert base64.b64decode(b"aGVsbG8=") == b"hello"


if __name__ == "__main__":
    main()
