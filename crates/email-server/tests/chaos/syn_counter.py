"""Counts TCP connection attempts (SYN segments) to one port on the loopback
interface, for tests/chaos.rs (F5): a relay that is down refuses
connections in the kernel, before any program of ours could count them, so
they are counted on the wire.

Usage: syn_counter.py PORT

Prints "READY" once it captures, or "UNAVAILABLE <reason>" and exits with
status 2 when it may not open a packet socket (it needs root or
CAP_NET_RAW, and Linux). Then, for each line it reads on standard input,
prints "COUNT <n>": the SYNs to PORT seen so far. Ends at end of input.

A classic BPF filter keeps all other loopback traffic out of this process;
every packet that passes it is checked again here.
"""

import ctypes
import socket
import struct
import sys
import threading

ETH_P_IP = 0x0800
SO_ATTACH_FILTER = 26
PACKET_OUTGOING = 4


def program(port):
    """A filter for a SOCK_DGRAM packet socket (data starts at the IPv4
    header): unfragmented TCP to `port` with SYN set and ACK clear."""
    drop = 11
    return [
        (0x30, 0, 0, 9),  # 0: ldb [9]            protocol
        (0x15, 0, drop - 2, 6),  # 1: jeq #6 (TCP)
        (0x28, 0, 0, 6),  # 2: ldh [6]            flags, fragment offset
        (0x45, drop - 4, 0, 0x1FFF),  # 3: jset #0x1fff (a fragment)
        (0xB1, 0, 0, 0),  # 4: ldxb 4*([0]&0xf)   IP header length
        (0x48, 0, 0, 2),  # 5: ldh [x+2]          destination port
        (0x15, 0, drop - 7, port),  # 6: jeq #port
        (0x50, 0, 0, 13),  # 7: ldb [x+13]        TCP flags
        (0x54, 0, 0, 0x12),  # 8: and #(SYN|ACK)
        (0x15, 0, drop - 10, 0x02),  # 9: jeq #SYN
        (0x06, 0, 0, 0xFFFF),  # 10: accept
        (0x06, 0, 0, 0),  # 11: drop
    ]


def is_syn_to(packet, port):
    if len(packet) < 20 or packet[9] != 6:
        return False
    header = (packet[0] & 0x0F) * 4
    if len(packet) < header + 14:
        return False
    dport = struct.unpack("!H", packet[header + 2 : header + 4])[0]
    flags = packet[header + 13]
    return dport == port and flags & 0x12 == 0x02


def main():
    port = int(sys.argv[1])
    try:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
        code = b"".join(struct.pack("HBBI", *op) for op in program(port))
        buf = ctypes.create_string_buffer(code)
        fprog = struct.pack("HL", len(code) // 8, ctypes.addressof(buf))
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
        sock.bind(("lo", 0))
    except (OSError, AttributeError) as e:
        print(f"UNAVAILABLE {e}", flush=True)
        sys.exit(2)

    count = 0
    lock = threading.Lock()

    def capture():
        nonlocal count
        while True:
            packet, address = sock.recvfrom(65535)
            # Loopback shows each packet twice: leaving and arriving.
            if address[2] != PACKET_OUTGOING and is_syn_to(packet, port):
                with lock:
                    count += 1

    threading.Thread(target=capture, daemon=True).start()
    print("READY", flush=True)
    for _ in sys.stdin:
        with lock:
            n = count
        print(f"COUNT {n}", flush=True)


if __name__ == "__main__":
    main()
