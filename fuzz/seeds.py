#!/usr/bin/env python3
"""Writes seed inputs for the `packet` fuzz target from pcap captures (outside the repository):
one input per capture and window of 8 frames, in the target's input layout.

`seeds.py ring OUT_DIR` writes the seeds of the `ring_recover` target instead: ring files of
the version 2 layout (ring/src/spsc.rs) holding record-like frames, one of them wrapped with
a padding marker, in the target's input layout."""
import os
import struct
import sys
import zlib

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


CHECK_KEY = 0xC7A15EED


def ring_seed(capacity_log, tail, payloads):
    """The target's input for a ring of 64 << capacity_log bytes whose frames start at `tail`."""
    capacity = 64 << capacity_log
    data = bytearray(capacity)
    head = tail
    for payload in payloads:
        n = len(payload)
        need = (8 + n + 4 + 7) & ~7
        index = head % capacity
        if need > capacity - index:
            data[index:index + 8] = struct.pack("<II", 0xFFFFFFFF, 0xFFFFFFFF ^ CHECK_KEY)
            head += capacity - index
            index = 0
        crc = zlib.crc32(struct.pack("<I", n) + payload)
        record = struct.pack("<II", n, n ^ CHECK_KEY) + payload + struct.pack("<I", crc)
        data[index:index + len(record)] = record
        head += need
    span = (head - tail) // 8
    return struct.pack("<BBHH", 0, capacity_log, tail // 8, span) + bytes(data)


def record(i):
    """A MessagePack array shaped like an encoded record (22 fields, small values)."""
    fields = bytes([0xCC, i, 0x00, 0x00, 0x06, 0x04]) + b"\x92\xc4\x04\xc0\x00\x02\x0a\xcd\x9c\x40"
    fields += b"\x92\xc4\x04\xc6\x33\x64\x07\xcd\x01\xbb\xc2\x90"
    fields += bytes([0xCE]) + struct.pack(">I", 1700000000 + i) + bytes([0xCE]) + struct.pack(">I", 1700000001 + i)
    fields += b"\x96" + bytes([6, 0xCD, 2, 0xBC, 0xCD, 1, 0x2C, 0, 0, 0]) * 1
    fields += b"\x96" + bytes([5, 0xCD, 0x13, 0x88, 0xCD, 0x10, 0x68, 0, 0, 0])
    fields += b"\x00\x02\xa8ShADadFf\x00\xc0\x94\xcd\x05\xdc\xc0\xc0\xc0\x90\x00\x00"
    return b"\xdc\x00\x16" + fields


def ring_main(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    seeds = {
        "six-records": ring_seed(4, 0, [record(i) for i in range(6)]),
        "wrapped": ring_seed(3, 1536 + 384, [record(i) for i in range(3)]),
        "small-frames": ring_seed(0, 8 * 9, [b"", b"x", b"\x93\x01\x02\x03"]),
    }
    # The whole file as it is, for the raw shape.
    six = seeds["six-records"]
    capacity_log, tail, span = six[1], struct.unpack("<H", six[2:4])[0], struct.unpack("<H", six[4:6])[0]
    header = bytearray(512)
    header[0:8] = b"CTRLRING"
    header[8:24] = struct.pack("<IIQ", 2, 512, 64 << capacity_log)
    header[128:136] = struct.pack("<Q", (tail + span) * 8)
    header[256:264] = struct.pack("<Q", tail * 8)
    header[384:392] = struct.pack("<Q", 1)
    seeds["raw-file"] = struct.pack("<BBHH", 1, 0, 0, 0) + bytes(header) + six[6:]
    for name, blob in seeds.items():
        with open(os.path.join(out_dir, name), "wb") as f:
            f.write(blob)
    print("%d seeds" % len(seeds))


def main():
    if sys.argv[1] == "ring":
        ring_main(sys.argv[2])
        return
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
