#!/usr/bin/env python3
"""Writes the seed corpus (fuzz/corpus/<target>/seed-*) from PROTOCOL.md's hex vectors.

Run from anywhere: python3 fuzz/seeds/make_seeds.py [path/to/PROTOCOL.md]. Without an
argument the vectors below (copied from PROTOCOL.md) are used.
"""
import os
import re
import sys

VECTORS = {
    "register_alice": "0000004b81b05265676973746572496e7374616e636583ad696e7374616e63655f6e616d65ac616c6963652d73747564696fa776657273696f6ea5302e312e30ad73657373696f6e5f746f6b656ec0",
    "register_bob_token": "0000004581b05265676973746572496e7374616e636583ad696e7374616e63655f6e616d65a3626f62a776657273696f6ea5302e312e30ad73657373696f6e5f746f6b656ea36a616d",
    "register_bob_caps": "0000005e81b05265676973746572496e7374616e636584ad696e7374616e63655f6e616d65a3626f62a776657273696f6ea5302e312e30ad73657373696f6e5f746f6b656ec0ac6361706162696c697469657392a4706f6e67a870726573656e6365",
    "registration_response": "0000011481b4526567697374726174696f6e526573706f6e736584a773756363657373c3a76d657373616765b15265676973746572656420617320626f62ab61737369676e65645f6964c410123e4567e89b12d3a456426614174000b163757272656e745f696e7374616e6365739185a26964c41000112233445566778899aabbccddeeffa46e616d65ac616c6963652d73747564696fa776657273696f6ea5302e312e30ac636f6e6e65637465645f617482b0736563735f73696e63655f65706f6368ce65a50937b16e616e6f735f73696e63655f65706f6368cd01f4ad6c6173745f616374697669747982b0736563735f73696e63655f65706f6368ce65a50937b16e616e6f735f73696e63655f65706f6368cd01f4",
    "state_update": "0000005681ab537461746555706461746583b2736f757263655f696e7374616e63655f6964c410123e4567e89b12d3a456426614174000a974696d657374616d70cf0000018d0cabfed8ab7570646174655f6461746193010203",
    "state_broadcast": "0000004d81ae537461746542726f61646361737483b4736f757263655f696e7374616e63655f6e616d65a3626f62a974696d657374616d70cf0000018d0cabfed8ab7570646174655f6461746193010203",
    "instance_disconnected": "0000004781b4496e7374616e6365446973636f6e6e656374656482ab696e7374616e63655f6964c410123e4567e89b12d3a456426614174000ad696e7374616e63655f6e616d65a3626f62",
    "instance_connected": "0000004481b1496e7374616e6365436f6e6e656374656482ab696e7374616e63655f6964c410123e4567e89b12d3a456426614174000ad696e7374616e63655f6e616d65a3626f62",
    "ping": "0000001281a450696e6781a974696d657374616d702a",
    "pong": "0000001281a4506f6e6781a974696d657374616d702a",
    "error": "0000003481a54572726f7281a76d657373616765d922496e7374616e6365206e616d652027626f622720616c726561647920696e20757365",
}


def bin_form(frame):
    """The StateUpdate vector with update_data as a bin (c4 03 01 02 03)."""
    body = frame[4:].replace(bytes.fromhex("93010203"), bytes.fromhex("c403010203"))
    return len(body).to_bytes(4, "big") + body


def msgpack_str(s):
    data = s.encode()
    return (bytes([0xA0 | len(data)]) if len(data) < 32 else bytes([0xD9, len(data)])) + data


def register_with_capabilities(name, capabilities):
    """RegisterInstance {instance_name, version: "0.1.0", capabilities: [...]}, framed."""
    body = b"\x81" + msgpack_str("RegisterInstance") + b"\x83"
    body += msgpack_str("instance_name") + msgpack_str(name)
    body += msgpack_str("version") + msgpack_str("0.1.0")
    body += msgpack_str("capabilities") + bytes([0x90 | len(capabilities)])
    body += b"".join(msgpack_str(c) for c in capabilities)
    return len(body).to_bytes(4, "big") + body


def write(target, name, data):
    folder = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "corpus", target)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "seed-" + name), "wb") as f:
        f.write(data)


def main():
    frames = {name: bytes.fromhex(h) for name, h in VECTORS.items()}
    if len(sys.argv) > 1:
        text = open(sys.argv[1]).read()
        found = set(re.findall(r"^    (00[0-9a-f]{6,})$", text, re.M))
        missing = {h for h in VECTORS.values()} - found
        assert not missing, f"vectors no longer in PROTOCOL.md: {missing}"
    frames["state_update_bin"] = bin_form(frames["state_update"])
    everything = b"".join(frames.values())
    for name, frame in frames.items():
        # frame_codec: [max_len u16][chunk seed][stream]
        write("frame_codec", name, b"\x40\x00\x07" + frame)
        write("decode_body", name, frame[4:])
    write("frame_codec", "all_vectors", b"\xff\xff\x01" + everything)
    write("frame_codec", "small_max", b"\x00\x20\x00" + everything)
    # connection: a first frame (registration), then what a session sends.
    register, caps = frames["register_alice"], frames["register_bob_caps"]
    update, update_bin = frames["state_update"], frames["state_update_bin"]
    sessions = {
        "register_only": register,
        "register_update_ping": register + update + frames["ping"],
        "register_bin_update": register + update_bin + update,
        "caps_pong_update": caps + frames["pong"] + update + frames["ping"],
        "token_session": frames["register_bob_token"] + update,
        "register_twice": register + register + update,
        "not_register_first": update + register,
        "every_vector": register + everything,
        "oversize_after_register": register + b"\x00\x20\x00\x00" + b"\x00" * 16,
        "zero_length": register + b"\x00\x00\x00\x00",
        "partial_frame": register + update[:30],
        "caps_all": register_with_capabilities("carol", ["pong", "presence", "resume", "snapshot"])
        + update
        + frames["pong"]
        + update_bin,
    }
    for name, data in sessions.items():
        write("connection", name, data)


if __name__ == "__main__":
    main()
