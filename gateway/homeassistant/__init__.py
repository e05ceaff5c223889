"""Home Assistant MQTT discovery: the buttons, terminals and the door as Home Assistant devices."""
