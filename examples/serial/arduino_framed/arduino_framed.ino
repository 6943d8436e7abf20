/* Ask the model on the computer running `edgesdk serial`, and show the answer: framed mode.
 *
 * Framed mode (docs/serial-protocol.md, edgesdk-serial/1) suits any link: every frame carries a CRC-16,
 * a frame hit by noise is dropped and sent again, and each piece of the answer is acknowledged before
 * the next one comes, so the 64-byte receive buffer of an Uno is never overrun. About 3 KB of flash.
 *
 * Wiring: the board's USB port to the Pi, and on the Pi
 *     edgesdk serial --port /dev/serial/by-id/usb-Arduino__www.arduino.cc__0043_...-if00
 * (BRIDGE is Serial). Boards with a second UART (Mega, Leonardo, ESP32, STM32) can use it instead, wired
 * to the Pi's GPIO UART (TX to RX, RX to TX, GND to GND; the Pi takes 3.3 V only: level-shift a 5 V board):
 * set BRIDGE to Serial1 and CONSOLE to Serial, then type questions in the serial monitor.
 */
#include <Arduino.h>

#ifndef BRIDGE
#define BRIDGE Serial                 // the port wired to the bridge
#endif
#ifndef BRIDGE_BAUD
#define BRIDGE_BAUD 115200
#endif
// #define CONSOLE Serial             // where questions are typed and answers shown, on boards that have one
#ifndef QUESTION
#define QUESTION "Tell me a fun fact about octopuses."    // asked once a minute when there is no CONSOLE
#endif

enum : uint8_t { HELLO = 0x01, ASK = 0x03, ACK = 0x05, READY = 0x81, BRIDGE_ACK = 0x85, CHUNK = 0x86,
                 END = 0x87, BUSY = 0x88, REFUSED = 0x89 };
const uint8_t RX_BUFFER = 64;         // this board's serial receive buffer, told to the bridge in HELLO
const uint8_t MAX_QUESTION = 120;

static uint8_t raw[RX_BUFFER];        // the frame being received, COBS-encoded
static uint8_t rawLen = 0;
static bool rawTooLong = false;
static uint8_t body[RX_BUFFER];       // the last good frame: type, seq, length (2), payload, CRC (2)
static uint8_t payloadLen = 0;
static uint8_t askSeq = 0;

uint16_t crc16(const uint8_t *p, uint16_t n) {     // CRC-16/CCITT-FALSE
  uint16_t crc = 0xFFFF;
  while (n--) {
    crc ^= (uint16_t)(*p++) << 8;
    for (uint8_t i = 0; i < 8; i++) crc = (crc & 0x8000) ? (crc << 1) ^ 0x1021 : crc << 1;
  }
  return crc;
}

// 0x00, then COBS(type, seq, length, payload, CRC), then 0x00. COBS: each run of non-zero bytes goes
// out after a code byte of its length + 1, and the zero after it is left out (runs here are < 254).
void sendFrame(uint8_t type, uint8_t seq, const uint8_t *payload, uint8_t n) {
  uint8_t b[4 + MAX_QUESTION + 2];
  b[0] = type; b[1] = seq; b[2] = 0; b[3] = n;
  if (n) memcpy(b + 4, payload, n);
  uint16_t crc = crc16(b, 4 + n);
  b[4 + n] = crc >> 8;
  b[5 + n] = crc & 0xFF;
  uint8_t len = 6 + n, start = 0;
  BRIDGE.write((uint8_t)0);
  for (uint8_t i = 0; i <= len; i++) {
    if (i == len || b[i] == 0) {
      BRIDGE.write((uint8_t)(i - start + 1));
      BRIDGE.write(b + start, i - start);
      start = i + 1;
    }
  }
  BRIDGE.write((uint8_t)0);
}

// True when a good frame from the bridge is in body[] (false after timeoutMs without one).
bool readFrame(unsigned long timeoutMs) {
  unsigned long start = millis();
  while (millis() - start < timeoutMs) {
    if (!BRIDGE.available()) continue;
    uint8_t c = BRIDGE.read();
    if (c != 0) {
      if (rawLen < sizeof raw) raw[rawLen++] = c; else rawTooLong = true;
      continue;
    }
    uint8_t n = 0, i = 0;             // a delimiter: COBS-decode raw[] into body[], then check it
    bool ok = !rawTooLong && rawLen > 0;
    while (ok && i < rawLen) {
      uint8_t code = raw[i];
      if (i + code > rawLen) { ok = false; break; }
      for (uint8_t k = 1; k < code; k++) body[n++] = raw[i + k];
      i += code;
      if (code < 0xFF && i < rawLen) body[n++] = 0;
    }
    rawLen = 0;
    rawTooLong = false;
    if (!ok || n < 6 || body[2] != 0 || body[3] != n - 6) continue;
    if (crc16(body, n - 2) != ((uint16_t)body[n - 2] << 8 | body[n - 1])) continue;
    payloadLen = n - 6;
    return true;
  }
  return false;
}

void show(const uint8_t *text, uint8_t n) {
#ifdef CONSOLE
  CONSOLE.write(text, n);
#else
  (void)text; (void)n;                // put the text on a display here
#endif
}

// Until the bridge says READY. (It also sends READY when it opens the port, but opening resets an Uno.)
void hello() {
  const uint8_t buffer[3] = {0, RX_BUFFER, 1};     // rx_buffer (2 bytes), window: one frame at a time
  for (;;) {
    sendFrame(HELLO, 0, buffer, 3);
    while (readFrame(1000))
      if (body[0] == READY) return;
  }
}

// Ask and show the answer as it comes. Returns the END reason (0 stop, 1 length, 2 cancelled, 3 error),
// -1 when the bridge does not answer, -2 when it is busy (ask later), -3 when it refuses the question.
int ask(const char *question) {
  uint8_t n = strlen(question) < MAX_QUESTION ? strlen(question) : MAX_QUESTION;
  int expected = -1, taken = -1;
  askSeq++;                           // a new seq for a new question; the same one when asking again
  for (uint8_t attempt = 0; attempt < 5 && expected < 0; attempt++) {
    sendFrame(ASK, askSeq, (const uint8_t *)question, n);
    while (expected < 0 && readFrame(1000)) {
      if (body[1] != askSeq) continue;
      if (body[0] == BRIDGE_ACK && payloadLen >= 1) expected = body[4];   // the answer's first seq
      else if (body[0] == BUSY) return -2;
      else if (body[0] == REFUSED) return -3;
    }
  }
  if (expected < 0) return -1;
  while (readFrame(30000)) {          // 30 s without a frame: the bridge is gone
    if (body[0] != CHUNK && body[0] != END) continue;
    if (body[1] != expected) {        // a repeat, or one after a lost frame: say what we have
      if (taken >= 0) sendFrame(ACK, taken, 0, 0);
      continue;
    }
    taken = body[1];
    expected = (taken + 1) & 0xFF;
    if (body[0] == END) {
      sendFrame(ACK, taken, 0, 0);
      return body[4] < 4 ? body[4] : 3;
    }
    show(body + 4, payloadLen);       // acknowledged once shown: the bridge waits for us
    sendFrame(ACK, taken, 0, 0);
  }
  return -1;
}

void setup() {
  BRIDGE.begin(BRIDGE_BAUD);
#ifdef CONSOLE
  CONSOLE.begin(115200);
#endif
  hello();
}

void loop() {
#ifdef CONSOLE
  static char question[MAX_QUESTION + 1];
  static uint8_t len = 0;
  if (!CONSOLE.available()) return;
  char c = CONSOLE.read();
  if (c != '\n' && c != '\r') {
    if (len < MAX_QUESTION) question[len++] = c;
    return;
  }
  if (len == 0) return;
  question[len] = 0;
  len = 0;
#else
  const char *question = QUESTION;
#endif
  int reason = ask(question);
#ifdef CONSOLE
  const char *names[] = {"stop", "length", "cancelled", "error"};
  CONSOLE.print(" [");
  CONSOLE.print(reason >= 0 ? names[reason] : reason == -2 ? "busy" : reason == -3 ? "refused" : "no answer");
  CONSOLE.println("]");
#else
  delay(60000UL);
#endif
  if (reason == -1) hello();          // the bridge restarted or the cable came out: start again
}
