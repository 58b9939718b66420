#!/usr/bin/env python3
"""Writes the hand-made seed inputs of every fuzz target into fuzz/corpus/<target>/.

Each seed is named after what it holds, so a failing replay names something readable. Running
it again rewrites these files and leaves other corpus files (minimized fuzzer finds) alone.
"""

import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def frame(op, seq=1, body=b"", ver=1, pack_len=None, header_len=16):
    """A goim v2 frame; pack_len and header_len can be forced to wrong values."""
    if pack_len is None:
        pack_len = 16 + len(body)
    return struct.pack(">ihhii", pack_len, header_len, ver, op, seq) + body


def ws(opcode, payload, mask=b"\x37\xfa\x21\x3d", fin=True, length_form=None, rsv=0):
    """A WebSocket frame; masked unless mask is None. length_form forces 7, 16 or 64 bits."""
    b0 = (0x80 if fin else 0) | rsv | opcode
    n = len(payload)
    form = length_form or (7 if n <= 125 else 16 if n <= 65535 else 64)
    mask_bit = 0x80 if mask is not None else 0
    if form == 7:
        head = bytes([b0, mask_bit | n])
    elif form == 16:
        head = bytes([b0, mask_bit | 126]) + struct.pack(">H", n)
    else:
        head = bytes([b0, mask_bit | 127]) + struct.pack(">Q", n)
    if mask is None:
        return head + payload
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


AUTH = b'{"mid":123,"key":"","room_id":"live://1000","platform":"web","accepts":[1000,1001,1002]}'
HEARTBEAT = frame(2, 1)
AUTH_FRAME = frame(7, 1, AUTH)

frame_decode = {
    "empty": b"",
    "heartbeat": HEARTBEAT,
    "heartbeat_reply": frame(3, 1, struct.pack(">i", 5)),
    "auth": AUTH_FRAME,
    "send_msg": frame(4, 2, b"hello"),
    "change_room": frame(12, 3, b"live://2000"),
    "sub_ops": frame(14, 4, b"1000,1001"),
    "ack": frame(20, 5, b"42"),
    "sync_room": frame(22, 6, b"live://1000 17"),
    "raw_batch": frame(9, 0, frame(1000, 0, b'{"test":1}') + frame(1000, 0, b'{"test":2}')),
    "two_frames": HEARTBEAT + AUTH_FRAME,
    "three_frames_then_garbage": HEARTBEAT + HEARTBEAT + HEARTBEAT + b"\xde\xad\xbe",
    "truncated_body": AUTH_FRAME[:30],
    "fifteen_bytes": HEARTBEAT[:15],
    "header_len_20": frame(2, 1, header_len=20),
    "pack_len_3": frame(2, 1, pack_len=3),
    "pack_len_negative": frame(2, 1, pack_len=-16),
    "pack_len_max": frame(2, 1, body=b"x", pack_len=0x7FFFFFFF),
    "body_4096": frame(4, 1, b"a" * 4096),
    "body_4097": frame(4, 1, b"a" * 4097),
    "extreme_fields": frame(-(2**31), -1, b"\x00\xff", ver=-1),
}

REQUEST = (
    b"GET /sub HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n"
    b"Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\nCookie: a=b\r\n\r\n"
)

ws_handshake = {
    "valid": REQUEST,
    "valid_with_query": REQUEST.replace(b"/sub ", b"/sub?token=abc.def.ghi&x=1 "),
    "valid_lowercase_headers": REQUEST.lower().replace(b"get /sub http/1.1", b"GET /sub HTTP/1.1")
    .replace(b"dghlihnhbxbszsbub25jzq==", b"dGhlIHNhbXBsZSBub25jZQ=="),
    "valid_then_frame": REQUEST + ws(2, HEARTBEAT),
    "valid_no_cookie": REQUEST.replace(b"Cookie: a=b\r\n", b""),
    "http_1_0": REQUEST.replace(b"HTTP/1.1", b"HTTP/1.0"),
    "missing_key": REQUEST.replace(b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", b""),
    "empty_key": REQUEST.replace(b"dGhlIHNhbXBsZSBub25jZQ==", b""),
    "version_8": REQUEST.replace(b"Version: 13", b"Version: 8"),
    "no_upgrade": REQUEST.replace(b"Upgrade: websocket\r\n", b""),
    "connection_close": REQUEST.replace(b"keep-alive, Upgrade", b"close"),
    "post": REQUEST.replace(b"GET", b"POST"),
    "other_path": REQUEST.replace(b"/sub", b"/other"),
    "no_target": b"GET\r\n\r\n",
    "header_without_colon": REQUEST.replace(b"Host: example.com", b"Host example.com"),
    "not_utf8": REQUEST.replace(b"a=b", b"a=\xff\xfe"),
    "only_terminator": b"\r\n\r\n",
    "lf_only": REQUEST.replace(b"\r\n", b"\n"),
    "head_cut_before_last_lf": REQUEST[:-1],
    "long_header": REQUEST.replace(b"Cookie: a=b", b"Cookie: " + b"c" * 600),
    # A head of exactly 512 bytes (one of the harness's limits), then its blank line: once
    # refused when a read ended inside the blank line.
    "head_exactly_512": REQUEST.replace(b"a=b", b"a=" + b"b" * (513 + 4 - len(REQUEST))),
}

ws_frame = {
    "binary_heartbeat": ws(2, HEARTBEAT),
    "text_auth": ws(1, AUTH_FRAME),
    "binary_16bit_length": ws(2, frame(4, 1, b"m" * 200)),
    "binary_64bit_length_small": ws(2, HEARTBEAT, length_form=64),
    "binary_64bit_length_huge": bytes([0x82, 0xFF]) + b"\xff" * 8 + b"\x01\x02\x03\x04",
    "binary_16bit_length_non_minimal": ws(2, b"ab", length_form=16),
    "unmasked_server_frame": ws(2, HEARTBEAT, mask=None),
    "unmasked_16bit": ws(2, b"s" * 300, mask=None),
    "ping": ws(9, b"hi"),
    "pong": ws(10, b""),
    "close_1000": ws(8, struct.pack(">H", 1000) + b"bye"),
    "close_too_long": ws(8, b"x" * 126),
    "ping_not_fin": ws(9, b"hi", fin=False),
    "first_fragment": ws(1, AUTH_FRAME[:10], fin=False),
    "continuation": ws(0, AUTH_FRAME[10:]),
    "reserved_bits": ws(2, b"x", rsv=0x40),
    "opcode_3": ws(3, b"x"),
    "opcode_11": ws(11, b"x"),
    "one_byte": b"\x82",
    "mask_cut": ws(2, HEARTBEAT)[:4],
    "payload_cut": ws(2, HEARTBEAT)[:12],
    "two_frames": ws(2, HEARTBEAT) + ws(9, b""),
}


def reassembly_seed(websocket, max_body_index, stop_mask, read_seed, stream):
    """fuzz_reassembly's input: mode byte, read-size seed, then the client's bytes."""
    mode = (1 if websocket else 0) | (max_body_index << 1) | (stop_mask << 4)
    return bytes([mode, read_seed]) + stream


MAX_4096 = 4  # index of 4096 in comet::fuzzing's MAX_BODIES
MAX_16 = 2
MAX_LARGEST = 7  # usize::MAX: the WebSocket message limit once overflowed
FRAGMENTED = (
    ws(1, AUTH_FRAME[:5], fin=False)
    + ws(9, b"hi")
    + ws(0, AUTH_FRAME[5:40], fin=False)
    + ws(0, AUTH_FRAME[40:])
)

reassembly = {
    "tcp_auth_heartbeats": reassembly_seed(False, MAX_4096, 0, 7, AUTH_FRAME + HEARTBEAT + HEARTBEAT),
    "tcp_stop_after_auth": reassembly_seed(
        False, MAX_4096, 0b0010, 200, AUTH_FRAME + HEARTBEAT + frame(22, 2, b"5")
    ),
    "tcp_many_small_reads": reassembly_seed(
        False, MAX_4096, 0, 1, b"".join(frame(4, i, b"x" * i) for i in range(12))
    ),
    "tcp_oversize": reassembly_seed(False, MAX_16, 0, 3, frame(4, 1, b"y" * 17)),
    "tcp_garbage_after_frame": reassembly_seed(False, MAX_4096, 0, 9, HEARTBEAT + b"\xde" * 16),
    "tcp_incomplete_tail": reassembly_seed(False, MAX_4096, 0, 5, HEARTBEAT + AUTH_FRAME[:20]),
    "ws_messages": reassembly_seed(True, MAX_4096, 0, 11, ws(2, AUTH_FRAME) + ws(2, HEARTBEAT)),
    "ws_fragmented_with_ping": reassembly_seed(True, MAX_4096, 0, 42, FRAGMENTED + ws(2, HEARTBEAT)),
    "ws_stop_every_event": reassembly_seed(True, MAX_4096, 0b1111, 77, FRAGMENTED + ws(2, HEARTBEAT)),
    "ws_close_then_more": reassembly_seed(
        True, MAX_4096, 0, 13, ws(2, HEARTBEAT) + ws(8, b"\x03\xe8") + ws(2, HEARTBEAT)
    ),
    "ws_unmasked": reassembly_seed(True, MAX_4096, 0, 2, ws(2, HEARTBEAT, mask=None)),
    "ws_continuation_first": reassembly_seed(True, MAX_4096, 0, 4, ws(0, HEARTBEAT)),
    "ws_data_inside_fragmented": reassembly_seed(
        True, MAX_4096, 0, 6, ws(2, HEARTBEAT[:4], fin=False) + ws(2, HEARTBEAT)
    ),
    "ws_fragments_over_limit": reassembly_seed(
        True, MAX_16, 0, 8, ws(2, b"z" * 20, fin=False) + ws(0, b"z" * 20)
    ),
    "ws_frame_not_exact": reassembly_seed(True, MAX_4096, 0, 10, ws(2, HEARTBEAT + b"\x00")),
    "ws_largest_limit": reassembly_seed(True, MAX_LARGEST, 0, 3, ws(2, HEARTBEAT) + ws(2, AUTH_FRAME)),
    "tcp_largest_limit": reassembly_seed(False, MAX_LARGEST, 0, 3, HEARTBEAT + AUTH_FRAME[:40]),
    "ws_big_message_16bit": reassembly_seed(True, MAX_4096, 0, 12, ws(2, frame(4, 1, b"q" * 1000))),
}

http_query = {
    "push_keys": b"operation=1000&keys=a&keys=b",
    "push_keys_encoded": b"operation=1000&keys=b%20c&keys=a%2Cb&keys=a+b",
    "push_mids": b"operation=1000&mids=123&mids=456",
    "push_mids_same_number": b"operation=1000&mids=1&mids=01&mids=%2B1",
    "push_room": b"operation=1000&type=live&room=1000",
    "push_room_history": b"operation=1000&type=live&room=1000&history=true",
    "push_all": b"operation=1000&speed=1",
    "online_top": b"type=live&limit=20",
    "online_room": b"type=live&rooms=1000&rooms=1001",
    "inbox_state": b"mids=1&mids=2&mids=1",
    "nodes_platform": b"platform=web",
    "operation_too_big": b"operation=99999999999&keys=a",
    "limit_too_big": b"type=live&limit=18446744073709551616",
    "negative_zero": b"operation=-0&type=live&room=1",
    "utf8_percent": b"keys=%E4%BD%A0%E5%A5%BD&type=%F0%9F%98%80&rooms=%C3%A9",
    "invalid_utf8_percent": b"keys=%C3%28&rooms=%FF",
    "bad_percent": b"keys=%zz&mids=%&type=%4",
    "empty_values": b"keys=&mids=&type=&room=&rooms=&limit=&operation=",
    "separators_only": b"&&&=&==&",
    "no_equals": b"keys&mids&operation",
    "raw_bytes": b"keys=\xff\xfe&room=\x00",
}

TARGETS = {
    "frame_decode": frame_decode,
    "ws_handshake": ws_handshake,
    "ws_frame": ws_frame,
    "reassembly": reassembly,
    "http_query": http_query,
}

if __name__ == "__main__":
    for target, seeds in TARGETS.items():
        folder = os.path.join(HERE, "corpus", target)
        os.makedirs(folder, exist_ok=True)
        for name, data in seeds.items():
            with open(os.path.join(folder, "seed-" + name), "wb") as f:
                f.write(data)
        print(f"{target}: {len(seeds)} seeds")
