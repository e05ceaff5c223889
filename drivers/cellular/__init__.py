"""A cellular modem for the SMS second path: the PDU codec (pdu.py) and the AT driver
(modem.py). Why not a library: docs/modem.md."""

from drivers.cellular.modem import DeliveryReport, IncomingSms, Modem, ModemError

__all__ = ["DeliveryReport", "IncomingSms", "Modem", "ModemError"]
