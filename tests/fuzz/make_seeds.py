#!/usr/bin/env python3
"""Writes the committed seed corpus of the fuzz targets (tests/fuzz/corpus/<target>/).

Each seed is a valid or nearly valid input in the layout the target reads (see the target's
source): option bytes, then the damage to apply. Deterministic; rerun after a layout change.
"""
import pathlib
import struct

HERE = pathlib.Path(__file__).resolve().parent / "corpus"


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def shard(rank, world, step, compressor, sections):
    """A checkpoint shard in format version 1 (include/gradcomm/checkpoint.h)."""
    payload = b"".join(struct.pack("<I", len(n)) + n + struct.pack("<Q", len(d)) + d for n, d in sections)
    name = compressor.encode()
    head = b"GRADCKPT" + struct.pack("<IIIIqQQII", 1, 64 + len(name), rank, world, step, 0xABCDEF,
                                     len(payload), crc32c(payload), len(sections))
    head += struct.pack("<I", len(name)) + name
    return head + struct.pack("<I", crc32c(head)) + payload


def pairs(*flips):
    return bytes([len(flips)]) + b"".join(struct.pack("<HB", pos, x) for pos, x in flips)


def mutation(resize=128, flips=()):
    return bytes([resize]) + b"".join(struct.pack("<HB", pos, x) for pos, x in flips)


def layer(p, n, ndim_selector, seed, steps):
    return bytes([p - 1]) + struct.pack("<H", n) + bytes([ndim_selector, seed, steps - 1])


SEEDS = {
    "fuzz_checkpoint": {
        "valid_none": b"\x00" + shard(0, 1, 3, "none", [(b"gradcomm.compressor", b"")]),
        "valid_dgc_blobs": b"\x02" + shard(2, 4, 9, "dgc", [(b"gradcomm.compressor", bytes(range(40))),
                                                         (b"params", struct.pack("<4f", 1, 2, 3, 4))]),
        "resealed_bad_table": b"\x03" + shard(0, 1, 0, "none", [(b"gradcomm.compressor", b"xy")])[:-3] + b"\xff\xff\xff",
        "truncated": b"\x00" + shard(0, 1, 0, "none", [(b"gradcomm.compressor", b"abc")])[:50],
    },
    "fuzz_dense_decode": {
        "fp32_clean": b"\x00" + layer(3, 1000, 1, 5, 1) + mutation(),
        "fp16_flip": b"\x01" + layer(4, 77, 1, 9, 2) + mutation(128, [(10, 0x7c)]),
        "short": b"\x00" + layer(2, 64, 1, 1, 1) + mutation(3),
    },
    "fuzz_dgc_decode": {
        "sparse_clean": bytes([12, 0]) + layer(3, 1000, 1, 5, 2) + mutation(),
        "fp16_exact_index": bytes([12, 5]) + layer(2, 500, 1, 7, 1) + mutation(128, [(6, 0x10)]),
        "count_over_k": bytes([30, 0]) + layer(4, 300, 1, 3, 1) + mutation(128, [(0, 0x40)]),
        "dense_fallback": bytes([200, 8]) + layer(4, 256, 0, 2, 2) + mutation(128, [(9, 0xff)]),
        "truncated": bytes([12, 0]) + layer(2, 800, 1, 4, 1) + mutation(7),
    },
    "fuzz_quantize_decode": {
        "bits4_clean": bytes([3, 7, 0]) + layer(3, 1000, 1, 5, 2) + mutation(),
        "bits1_stochastic": bytes([0, 0, 3]) + layer(2, 333, 1, 8, 1) + mutation(128, [(1, 0x02)]),
        "bits8_header": bytes([7, 63, 2]) + layer(4, 2049, 1, 1, 3) + mutation(128, [(12, 0x80)]),
        "padding": bytes([2, 3, 0]) + layer(2, 77, 1, 6, 1) + mutation(250),
    },
    "fuzz_state_load": {
        "dgc": bytes([0, 2]) + struct.pack("<H", 600) + mutation(),
        "quantize_flip": bytes([1, 3]) + struct.pack("<H", 300) + mutation(128, [(20, 0x01)]),
        "onebit_short": bytes([2, 1]) + struct.pack("<H", 100) + mutation(10),
    },
    "fuzz_exchange_framing": {
        "dgc_clean": bytes([1, 12, 4, 0]) + struct.pack("<H", 900) + b"\x00" * 8,
        "dgc_layer_count": bytes([2, 12, 1, 1]) + struct.pack("<H", 500) + pairs((0, 0x07)) * 4,
        "quantize_nonfinite_word": bytes([0, 3, 8, 2]) + struct.pack("<H", 700) + pairs((4, 0x01)) * 4,
        "quantize_payload": bytes([1, 5, 200, 0]) + struct.pack("<H", 1200) + pairs((40, 0x55), (9, 0x3)) * 4,
    },
}

for target, seeds in SEEDS.items():
    folder = HERE / target
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in seeds.items():
        (folder / name).write_bytes(data)
    print(f"{target}: {len(seeds)} seeds")
