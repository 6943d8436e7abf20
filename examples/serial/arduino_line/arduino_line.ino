/* Ask the model on the computer running `edgesdk serial`: line mode, the smallest client.
 *
 * A question is one line. The answer comes back as lines that start with "> " (a newline in the answer
 * is written \n, a backslash \\, other control characters \xHH), then one last line: "END <reason> ...",
 * "BUSY <why> retry_s=<n> ..." or "ERR <why> ...". docs/serial-protocol.md has the rest.
 * Line mode has no flow control: read the lines as they come (as here), or use framed mode.
 *
 * Wiring and the BRIDGE / CONSOLE settings: as in arduino_framed.ino. On the Pi:
 *     edgesdk serial --port /dev/serial/by-id/usb-Arduino__www.arduino.cc__0043_...-if00
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

static char line[72];                 // one line from the bridge: "> " + 60 bytes fit, CR LF dropped
static uint8_t lineLen = 0;

// True when a whole line from the bridge is in line[] (false after timeoutMs without one).
bool readLine(unsigned long timeoutMs) {
  unsigned long start = millis();
  while (millis() - start < timeoutMs) {
    if (!BRIDGE.available()) continue;
    char c = BRIDGE.read();
    if (c == '\n') {
      line[lineLen] = 0;
      lineLen = 0;
      return true;
    }
    if (c != '\r' && lineLen < sizeof line - 1) line[lineLen++] = c;
  }
  return false;
}

void show(char c) {
#ifdef CONSOLE
  CONSOLE.write((uint8_t)c);
#else
  (void)c;                            // put the text on a display here
#endif
}

void showEscaped(const char *p) {
  for (; *p; p++) {
    char c = *p;
    if (c == '\\' && p[1]) {
      c = *++p;
      if (c == 'n') c = '\n';
      else if (c == 'r') c = '\r';
      else if (c == 'x' && p[1] && p[2]) {
        char hex[3] = {p[1], p[2], 0};
        c = (char)strtol(hex, 0, 16);
        p += 2;
      }
    }
    show(c);
  }
}

void say(const char *text) {
#ifdef CONSOLE
  CONSOLE.println(text);
#else
  (void)text;
#endif
}

// Ask and show the answer as it comes; true when it ended with END (false: BUSY, ERR or no answer).
bool ask(const char *question) {
  BRIDGE.print(question);
  BRIDGE.print("\n");
  while (readLine(30000)) {           // 30 s without a line: the bridge is gone
    if (line[0] == '>' && line[1] == ' ') {
      showEscaped(line + 2);
    } else if (!strncmp(line, "END ", 4)) {
      say("");
      say(line);                      // END stop tokens=... bytes=...
      return true;
    } else if (!strncmp(line, "BUSY ", 5) || !strncmp(line, "ERR ", 4)) {
      say(line);
      return false;
    }                                 // anything else (PONG, a READY): not for this question
  }
  say("no answer");
  return false;
}

void setup() {
  BRIDGE.begin(BRIDGE_BAUD);
#ifdef CONSOLE
  CONSOLE.begin(115200);
#endif
  for (uint8_t i = 0; i < 10; i++) {  // opening the port reset this board: ask for READY again
    BRIDGE.print("/hello\n");
    if (readLine(1000) && !strncmp(line, "READY ", 6)) break;
  }
}

void loop() {
#ifdef CONSOLE
  static char question[121];
  static uint8_t len = 0;
  if (!CONSOLE.available()) return;
  char c = CONSOLE.read();
  if (c != '\n' && c != '\r') {
    if (len < sizeof question - 1) question[len++] = c;
    return;
  }
  if (len == 0) return;
  question[len] = 0;
  len = 0;
  ask(question);
#else
  ask(QUESTION);
  delay(60000UL);
#endif
}
