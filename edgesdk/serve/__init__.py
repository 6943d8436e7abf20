"""Serving a Model to other programs and devices: the serial bridge (serial.py over serial_protocol.py)."""
