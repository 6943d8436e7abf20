"""Ask the model on a Raspberry Pi from MicroPython (ESP32, RP2040, STM32) over a UART, in framed mode.

Framed mode (docs/serial-protocol.md, edgesdk-serial/1): every frame has a CRC-16, noise is detected
and repaired, and each piece of the answer is acknowledged, so the board's receive buffer never overflows.

Wiring to the Pi's GPIO UART (both sides 3.3 V): board TX -> Pi RX (GPIO 15), board RX -> Pi TX (GPIO 14),
GND -> GND. On the Pi (enable the UART with raspi-config, serial console off):

    edgesdk serial --port /dev/serial0

Copy this file to the board (mpremote cp micropython_framed.py :edgesdk_bridge.py) and:

    from machine import UART
    from edgesdk_bridge import Bridge
    bridge = Bridge(UART(1, baudrate=115200, tx=17, rx=16, rxbuf=256), rx_buffer=256)
    bridge.hello()
    reason, tokens = bridge.ask("What is 2+2?", lambda text: print(text, end=""))

Or run it as main.py for a prompt on the REPL. It also runs on CPython, given any object with UART's
any(), read() and write() (the edgesdk tests do that).
"""
try:
    from time import sleep_ms, ticks_diff, ticks_ms
except ImportError:                                     # CPython
    import time

    def ticks_ms():
        return int(time.monotonic() * 1000)

    def ticks_diff(a, b):
        return a - b

    def sleep_ms(ms):
        time.sleep(ms / 1000)

HELLO, PING, ASK, CANCEL, ACK = 0x01, 0x02, 0x03, 0x04, 0x05
READY, PONG, BRIDGE_ACK, CHUNK, END, BUSY, ERROR = 0x81, 0x82, 0x85, 0x86, 0x87, 0x88, 0x89
REASONS = ("stop", "length", "cancelled", "error")


def crc16(data):
    """CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def cobs_encode(data):
    out = bytearray(b"\x00")
    code_at, code = 0, 1
    for byte in data:
        if byte:
            out.append(byte)
            code += 1
        if not byte or code == 0xFF:
            out[code_at] = code
            code_at, code = len(out), 1
            out.append(0)
    out[code_at] = code
    return bytes(out)


def cobs_decode(data):
    out, i = bytearray(), 0
    while i < len(data):
        code = data[i]
        if code == 0 or i + code > len(data):
            raise ValueError("not COBS")
        out += data[i + 1:i + code]
        i += code
        if code < 0xFF and i < len(data):
            out.append(0)
    return bytes(out)


class Bridge:
    """One link to `edgesdk serial`. rx_buffer: bytes the UART's receive buffer holds (rxbuf=)."""

    def __init__(self, uart, rx_buffer=64, window=1):
        self.uart = uart
        self.rx_buffer, self.window = rx_buffer, window
        self.seq = 0
        self.raw = bytearray()             # bytes of the frame being received
        self.inbox, self.at = b"", 0       # bytes read from the UART, not looked at yet
        self.model = None

    def send(self, kind, seq, payload=b""):
        body = bytes((kind, seq, len(payload) >> 8, len(payload) & 0xFF)) + payload
        crc = crc16(body)
        self.uart.write(b"\x00" + cobs_encode(body + bytes((crc >> 8, crc & 0xFF))) + b"\x00")

    def frame(self, timeout_ms=1000):
        """The next good frame from the bridge as (type, seq, payload), or None after timeout_ms."""
        start = ticks_ms()
        while True:
            while self.at < len(self.inbox):
                byte = self.inbox[self.at]
                self.at += 1
                if byte:
                    if len(self.raw) <= self.rx_buffer:
                        self.raw.append(byte)
                    continue
                raw, self.raw = self.raw, bytearray()
                try:
                    body = cobs_decode(raw)
                except ValueError:
                    continue
                if len(body) >= 6 and (body[2] << 8 | body[3]) == len(body) - 6 \
                        and crc16(body[:-2]) == (body[-2] << 8 | body[-1]):
                    return body[0], body[1], body[4:-2]
            if ticks_diff(ticks_ms(), start) >= timeout_ms:
                return None
            if self.uart.any():
                self.inbox, self.at = self.uart.read(), 0
            else:
                sleep_ms(2)

    def hello(self, tries=10):
        """Say this board (re)started and how much it can buffer; returns the model's name."""
        for _ in range(tries):
            self.send(HELLO, 0, bytes((self.rx_buffer >> 8, self.rx_buffer & 0xFF, self.window)))
            f = self.frame(1000)
            while f is not None and f[0] != READY:
                f = self.frame(1000)
            if f is not None:
                self.max_request = f[2][1] << 8 | f[2][2]
                self.model = f[2][3:].decode()
                return self.model
        raise OSError("no READY from the bridge: wiring, baud rate, is edgesdk serial running?")

    def ask(self, question, on_text, timeout_ms=60000):
        """Ask; on_text(str) gets each piece of the answer. Returns (reason, tokens): reason is stop, length,
        cancelled, error; or ("busy", retry_s) / ("refused", code) when the bridge did not take it."""
        self.seq = (self.seq + 1) & 0xFF
        seq, expected = self.seq, None
        for _ in range(5):                      # until the bridge says it has the question
            self.send(ASK, seq, question.encode())
            f = self.frame(1000)
            while f is not None and not (f[1] == seq and f[0] in (BRIDGE_ACK, BUSY, ERROR)):
                f = self.frame(1000)
            if f is None:
                continue
            if f[0] == BUSY:
                return "busy", f[2][1] << 8 | f[2][2]
            if f[0] == ERROR:
                return "refused", f[2][0]
            expected = f[2][0]                  # BRIDGE_ACK: the seq of the answer's first frame
            break
        if expected is None:
            return "timeout", 0
        taken, start = None, ticks_ms()
        while ticks_diff(ticks_ms(), start) < timeout_ms:
            f = self.frame(500)
            if f is None or f[0] not in (CHUNK, END):
                continue
            kind, s, payload = f
            if s != expected:                   # a repeat, or one after a lost frame
                if taken is not None:
                    self.send(ACK, taken)
                continue
            self.send(ACK, s)
            taken, expected, start = s, (s + 1) & 0xFF, ticks_ms()
            if kind == END:
                return REASONS[payload[0]], payload[1] << 8 | payload[2]
            on_text(payload.decode())
        return "timeout", 0

    def cancel(self):
        self.send(CANCEL, (self.seq + 128) & 0xFF)


def main():
    from machine import UART
    bridge = Bridge(UART(1, baudrate=115200, tx=17, rx=16, rxbuf=256), rx_buffer=256)
    print("model:", bridge.hello())
    while True:
        reason, tokens = bridge.ask(input("? "), lambda text: print(text, end=""))
        print(" [%s, %d tokens]" % (reason, tokens))


if __name__ == "__main__":
    main()
