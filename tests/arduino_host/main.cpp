/* main() and the streams for tests/arduino_host/Arduino.h: setup(), then loop() forever. */
#include "Arduino.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

HostStream Serial(-1, -1);
HostStream Console(0, 1);

int HostStream::available() {
  int n = 0;
  if (ioctl(in_fd_, FIONREAD, &n) < 0) n = 0;
  if (n == 0) {
    struct pollfd p = {in_fd_, POLLIN, 0};
    poll(&p, 1, 1);
  }
  return n;
}

int HostStream::read() {
  unsigned char c;
  return ::read(in_fd_, &c, 1) == 1 ? c : -1;
}

size_t HostStream::write(const uint8_t *data, size_t n) {
  size_t done = 0;
  while (done < n) {
    ssize_t k = ::write(out_fd_, data + done, n - done);
    if (k < 0 && (errno == EAGAIN || errno == EINTR)) continue;
    if (k <= 0) exit(3);              /* the other end is gone: so is this "board" */
    done += (size_t)k;
  }
  return n;
}

unsigned long millis() {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (unsigned long)(t.tv_sec * 1000 + t.tv_nsec / 1000000);
}

void delay(unsigned long ms) {
  struct timespec t = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
  nanosleep(&t, 0);
}

void setup();
void loop();

int main() {
  const char *fd = getenv("ARDUINO_HOST_SERIAL_FD");
  if (!fd) {
    fprintf(stderr, "set ARDUINO_HOST_SERIAL_FD to the descriptor of the serial line\n");
    return 2;
  }
  Serial.attach(atoi(fd), atoi(fd));
  setup();
  for (;;) loop();
}
