"""Emergency-button codecs: pure byte-to-frame decoders for the serial receivers.

``terminal_codec`` is eldergate's framed terminal protocol (``AA 55`` ... CRC-16);
``ev1527_codec`` is the 433 MHz EV1527 RF-to-UART module format (``FD a2 a1 a0 DF``).
Neither does I/O, reads a clock or raises on received bytes; see docs/protocols.md.
"""
