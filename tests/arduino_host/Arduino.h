/* The few Arduino calls the examples in examples/serial use, on a Linux host, so the tests can compile a
 * sketch with g++ and run it against the bridge: Serial is the file descriptor in $ARDUINO_HOST_SERIAL_FD
 * (a pseudo-terminal), Console is stdin/stdout. Not an Arduino emulator: just these calls. */
#pragma once
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

class HostStream {
 public:
  HostStream(int in_fd, int out_fd) : in_fd_(in_fd), out_fd_(out_fd) {}
  void attach(int in_fd, int out_fd) { in_fd_ = in_fd; out_fd_ = out_fd; }
  void begin(unsigned long) {}
  int available();                    /* waits up to 1 ms when nothing is there, so loops do not spin */
  int read();
  size_t write(uint8_t byte) { return write(&byte, 1); }
  size_t write(const uint8_t *data, size_t n);
  size_t print(const char *text) { return write((const uint8_t *)text, strlen(text)); }
  size_t println(const char *text) { return print(text) + print("\r\n"); }

 private:
  int in_fd_, out_fd_;
};

extern HostStream Serial;
extern HostStream Console;
unsigned long millis();
void delay(unsigned long ms);
