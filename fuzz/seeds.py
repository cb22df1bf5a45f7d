#!/usr/bin/env python3
"""Writes seed inputs for the `packet` fuzz target from pcap captures (outside the repository):
one input per capture and window of 8 frames, in the target's input layout."""
import os
import struct
import sys

LINKS = {1: 0, 113: 1, 276: 2, 101: 3, 12: 3, 14: 3, 228: 4, 229: 5, 0: 6, 108: 7}


def frames(path):
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 24:
        return None, []
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        end = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        end = ">"
    else:
        return None, []
    linktype = struct.unpack(end + "I", data[20:24])[0] & 0xFFFF
    out, at = [], 24
    while at + 16 <= len(data):
        incl = struct.unpack(end + "I", data[at + 8:at + 12])[0]
        out.append(data[at + 16:at + 16 + incl])
        at += 16 + incl
    return LINKS.get(linktype), out


def main():
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    n = 0
    for path in sys.argv[2:]:
        link, fs = frames(path)
        if link is None:
            continue
        for start in range(0, min(len(fs), 400), 8):
            blob = bytes([link])
            for fr in fs[start:start + 8]:
                fr = fr[:255]
                blob += bytes([len(fr)]) + fr
            name = os.path.join(out_dir, "%s-%d" % (os.path.basename(path), start))
            with open(name, "wb") as f:
                f.write(blob)
            n += 1
    print("%d seeds" % n)


main()
