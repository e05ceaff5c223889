"""Door access control: the door controller (relay, contact, exit request) and card access."""
